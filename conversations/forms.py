"""The conversation's settings: its model, instructions and sampling parameters."""

from django import forms
from django.conf import settings

from .endpoints import choice, parse_choice
from .models import Conversation, Preset, model_label


def flatten(options):
    """The (value, label) pairs of choices that may be grouped."""
    for value, label in options:
        if isinstance(label, list | tuple):
            yield from label
        else:
            yield value, label


class ConversationSettingsForm(forms.ModelForm):
    """The model applies from the next reply; so do the instructions and parameters."""

    model = forms.ChoiceField(label="Model")
    system_prompt = forms.CharField(
        label="System prompt",
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "placeholder": "Instructions for the model"}),
    )
    temperature = forms.FloatField(
        required=False, min_value=0, max_value=2, widget=forms.NumberInput(attrs={"step": "0.1"})
    )
    top_p = forms.FloatField(
        label="Top p",
        required=False,
        min_value=0,
        max_value=1,
        widget=forms.NumberInput(attrs={"step": "0.05"}),
    )
    max_tokens = forms.IntegerField(
        label="Max tokens", required=False, min_value=1, max_value=1_000_000
    )
    preset_name = forms.CharField(label="Preset name", required=False, max_length=100)

    class Meta:
        model = Conversation
        fields = ["model", "system_prompt", "temperature", "top_p", "max_tokens"]

    def __init__(self, *args, groups, **kwargs):
        """``groups``: each server with its models (``runtime.model_groups()``); one group
        (the default server alone) is a plain list, several are grouped by server."""
        super().__init__(*args, **kwargs)
        options = [
            (server.name, [(choice(server.id, name), model_label(name)) for name in names])
            for server, names in groups
        ]
        if len(options) == 1:
            options = options[0][1]
        offered = {value for value, _ in flatten(options)}
        current = self.instance.model
        if current and current not in offered:
            # A model no longer offered stays chosen.
            options.insert(0, (current, model_label(parse_choice(current)[1])))
        if not options:
            options = [("", model_label(""))]
        self.fields["model"].choices = options
        if not current:
            self.initial["model"] = next(iter(flatten(options)))[0]

    def clean_system_prompt(self):
        text = self.cleaned_data["system_prompt"]
        limit = settings.CHAT_MAX_MESSAGE_CHARS
        if len(text) > limit:
            raise forms.ValidationError(f"At most {limit:,} characters.")
        return text

    def save_preset(self, owner) -> Preset | None:
        """Keep these settings under ``preset_name`` (replacing one of that name)."""
        name = self.cleaned_data.get("preset_name", "").strip()
        if not name:
            return None
        values = {field: self.cleaned_data.get(field) for field in Preset.FIELDS}
        values["system_prompt"] = values["system_prompt"] or ""
        values["model"] = values["model"] or ""
        preset, _ = Preset.objects.update_or_create(owner=owner, name=name, defaults=values)
        return preset
