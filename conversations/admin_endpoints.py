"""The admin's endpoints: servers replies may come from, besides the default one.

The API key is write-only: the form takes a new one (or its removal) and never shows
the stored one, which is kept encrypted (conversations/endpoints.py).
"""

from asgiref.sync import async_to_sync
from django import forms
from django.contrib import admin, messages
from django.utils.html import format_html_join

from . import upstream
from .endpoints import Endpoint, KeyUnreadable
from .runtime import runtime


class EndpointForm(forms.ModelForm):
    api_key = forms.CharField(
        label="API key",
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only: kept encrypted, never shown again. Leave empty to keep the "
        "current key.",
    )
    clear_api_key = forms.BooleanField(label="Remove the API key", required=False)

    class Meta:
        model = Endpoint
        fields = [
            "name",
            "base_url",
            "api_key",
            "clear_api_key",
            "model_names",
            "stream_options",
            "send_reasoning",
            "enabled",
            "position",
        ]

    def save(self, commit=True):
        endpoint = super().save(commit=False)
        if self.cleaned_data.get("clear_api_key"):
            endpoint.api_key = ""
        elif self.cleaned_data.get("api_key"):
            endpoint.api_key = self.cleaned_data["api_key"]
        if commit:
            endpoint.save()
        return endpoint


def listed_models(endpoint: Endpoint) -> list[str]:
    """Ask the endpoint's server for its models now (GET /models); UpstreamError or
    KeyUnreadable when it cannot."""
    server = endpoint.server()

    async def ask():
        async with upstream.new_client() as client:
            return await upstream.list_models(
                server.base_url, client=client, api_key=server.api_key
            )

    return async_to_sync(ask)()


@admin.register(Endpoint)
class EndpointAdmin(admin.ModelAdmin):
    form = EndpointForm
    list_display = ["name", "base_url", "enabled", "has_key", "offered", "position"]
    list_editable = ["enabled", "position"]
    readonly_fields = ["key_state", "server_models"]
    actions = ["refresh_models"]

    def get_fields(self, request, obj=None):
        fields = list(self.form.Meta.fields)
        fields.insert(fields.index("api_key"), "key_state")
        return [*fields, "server_models"] if obj is not None else fields

    @admin.display(boolean=True, description="API key")
    def has_key(self, endpoint):
        return endpoint.has_api_key

    @admin.display(description="Models offered")
    def offered(self, endpoint):
        names = endpoint.configured_models()
        return f"{len(names)} configured" if names else "those GET /models lists"

    @admin.display(description="Stored API key")
    def key_state(self, endpoint):
        if not endpoint.pk or not endpoint.has_api_key:
            return "None"
        try:
            endpoint.api_key  # noqa: B018 (decrypted only to check it can be)
        except KeyUnreadable as error:
            return str(error)
        return "Set (encrypted; not shown)"

    @admin.display(description="Listed by the server now")
    def server_models(self, endpoint):
        try:
            names = listed_models(endpoint)
        except (upstream.UpstreamError, KeyUnreadable) as error:
            return f"Could not list them: {error}"
        if not names:
            return "None listed"
        return format_html_join(", ", "<code>{}</code>", ((name,) for name in names))

    @admin.action(description="Refresh the model lists of the selected endpoints")
    def refresh_models(self, request, queryset):
        runtime.endpoints_changed()  # this process asks every server again
        for endpoint in queryset:
            try:
                names = listed_models(endpoint)
            except (upstream.UpstreamError, KeyUnreadable) as error:
                self.message_user(
                    request, f"{endpoint.name}: could not list its models: {error}", messages.ERROR
                )
                continue
            self.message_user(request, f"{endpoint.name}: {len(names)} model(s) listed.")
