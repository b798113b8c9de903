"""The conversation's settings: its model, instructions and sampling parameters."""

from django import forms
from django.conf import settings

from .models import Conversation, Preset, model_label


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

    def __init__(self, *args, models: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        names = list(models)
        current = self.instance.model
        if current and current not in names:
            names.insert(0, current)  # a model the server no longer lists stays chosen
        if not names:
            names = [""]
        self.fields["model"].choices = [(name, model_label(name)) for name in names]
        if not current:
            self.initial["model"] = names[0]

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
