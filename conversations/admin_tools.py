"""The admin's page of the tool servers: each server's state and tools, and their switches.

Its rows are ``ToolSetting``s: an administrator switches a tool off (it is never offered)
or lets one that may change things run without asking. The page reads the servers from
the process's runtime, which opens them on its event loop.
"""

import asyncio

from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect
from django.template.response import TemplateResponse

from .models import ToolSetting
from .runtime import runtime
from .tool_calls import listed_tools


async def _states(reconnect: bool) -> list | None:
    """Each configured server's state and tools, or None when tools are off."""
    if reconnect:
        await runtime.close_tool_servers()
    servers = runtime.tool_servers()
    if servers is None:
        return None
    try:
        async with asyncio.timeout(settings.CHAT_TOOL_CONNECT_TIMEOUT + 2):
            await listed_tools(servers)
        return servers.states()
    finally:
        if asyncio.get_running_loop() is not runtime.loop:
            # A loop of this request alone (no ASGI server runs the site): close its sessions.
            await runtime.close_tool_servers()


@admin.register(ToolSetting)
class ToolSettingAdmin(admin.ModelAdmin):
    """One page (the changelist) lists every server's tools with two switches each."""

    def has_add_permission(self, request):
        return False  # rows are made by the page's switches

    def changelist_view(self, request, extra_context=None):
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            if not self.has_change_permission(request):
                raise PermissionDenied
            if "reconnect" in request.POST:
                self.message_user(request, "The tool servers were reconnected.")
                async_to_sync(_states)(True)
                return redirect(request.path)
            self._save(request)
            return redirect(request.path)
        try:
            states = async_to_sync(_states)(False)
        except TimeoutError:
            states = []
            self.message_user(request, "The tool servers did not answer in time.", messages.ERROR)
        context = {
            **self.admin_site.each_context(request),
            "title": "Tool servers",
            "opts": self.opts,
            "tools_off": states is None,
            "config_error": runtime.tool_config_error,
            "servers": self._servers(states or []),
            "can_change": self.has_change_permission(request),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/conversations/tool_servers.html", context)

    def _servers(self, states) -> list[dict]:
        rows = {(row.server, row.tool): row for row in ToolSetting.objects.all()}
        servers = []
        for state in states:
            tools = []
            for tool in state.tools:
                row = rows.pop((state.name, tool.name), None)
                tools.append(_tool_row(state.name, tool.name, tool.description, row, tool))
            servers.append({"state": state, "tools": tools})
        # Settings of tools no server lists now (renamed, removed, or their server is down).
        unlisted = [_tool_row(server, name, "", row, None) for (server, name), row in rows.items()]
        if unlisted:
            servers.append({"state": None, "tools": unlisted})
        return servers

    def _save(self, request) -> None:
        enabled, allowed = (
            set(request.POST.getlist("enabled")),
            set(request.POST.getlist("allowed")),
        )
        changed = 0
        for key in request.POST.getlist("listed")[:5000]:
            server, _, tool = key.partition("/")
            if not server or not tool or len(server) > 100 or len(tool) > 200:
                continue
            values = (key in enabled, key in allowed)
            row = ToolSetting.objects.filter(server=server, tool=tool).first()
            current = (row.enabled, row.allowed_without_asking) if row else (True, False)
            if values != current:
                ToolSetting.objects.update_or_create(
                    server=server,
                    tool=tool,
                    defaults={"enabled": values[0], "allowed_without_asking": values[1]},
                )
                changed += 1
        self.message_user(request, f"Saved ({changed} tool(s) changed).")


def _tool_row(server: str, name: str, description: str, row, tool) -> dict:
    return {
        "key": f"{server}/{name}",
        "server": server,
        "name": name,
        "function_name": tool.function_name if tool is not None else "",
        "description": description,
        "read_only": tool.read_only if tool is not None else None,
        "listed": tool is not None,
        "enabled": row.enabled if row is not None else True,
        "allowed": row.allowed_without_asking if row is not None else False,
    }
