"""The admin's page of the tool servers: states, tools, and the two switches per tool."""

import json
import re

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from conversations.models import ToolSetting
from conversations.runtime import runtime

pytestmark = pytest.mark.django_db


def checked(html: str, name: str, key: str) -> bool:
    match = re.search(rf'<input type="checkbox" name="{name}" value="{key}"[^>]*>', html)
    assert match, f"no {name} switch for {key}"
    return " checked" in match.group()


PAGE = reverse("admin:conversations_toolsetting_changelist")


@pytest.fixture
def tools_from(settings, tmp_path):
    def configure(servers: dict) -> None:
        path = tmp_path / "mcp.json"
        path.write_text(json.dumps({"mcpServers": servers}))
        settings.CHAT_MCP_CONFIG = str(path)

    settings.CHAT_TOOL_CONNECT_TIMEOUT = 2.0
    yield configure
    runtime._tools = None  # each request's sessions ended with its event loop


@pytest.fixture
def box(toolbox, tools_from):
    tools_from({"box": {"url": toolbox.url}, "gone": {"url": "http://127.0.0.1:9/mcp"}})


def test_the_page_lists_each_server_its_state_and_its_tools(admin_client, box):
    html = admin_client.get(PAGE).content.decode()
    assert 'data-server="box" data-state="ready"' in html
    assert "box · http · ready" in html
    assert 'data-tool="box/echo"' in html and "Say the text back." in html
    assert "Read-only: runs without asking." in html  # echo
    assert "May change things: asks the user first." in html  # shout
    assert 'data-server="gone" data-state="failed"' in html and "Unavailable:" in html
    # A link from the admin's index.
    assert "Tool servers" in admin_client.get(reverse("admin:index")).content.decode()


def test_switches_are_saved_and_offered_tools_follow(admin_client, box):
    listed = ["box/echo", "box/shout", "box/hold"]
    response = admin_client.post(
        PAGE, {"listed": listed, "enabled": ["box/shout", "box/hold"], "allowed": ["box/shout"]}
    )
    assert response.status_code == 302
    rows = {(r.tool, r.enabled, r.allowed_without_asking) for r in ToolSetting.objects.all()}
    assert rows == {("echo", False, False), ("shout", True, True)}  # hold: unchanged, no row
    html = admin_client.get(PAGE).content.decode()
    assert not checked(html, "enabled", "box/echo") and checked(html, "enabled", "box/shout")
    assert checked(html, "allowed", "box/shout") and not checked(html, "allowed", "box/hold")
    # A setting whose tool is no longer listed stays visible, to be switched back.
    ToolSetting.objects.create(server="box", tool="retired", enabled=False)
    html = admin_client.get(PAGE).content.decode()
    assert "Settings of tools no server lists now" in html and "box, not listed now" in html


def test_staff_without_the_permission_cannot_see_or_change_it(client, django_user_model, box):
    staff = django_user_model.objects.create_user("sam", password="pw", is_staff=True)
    client.force_login(staff)
    assert client.get(PAGE).status_code == 403
    assert client.post(PAGE, {"listed": ["box/echo"]}).status_code == 403
    assert not ToolSetting.objects.exists()
    staff.user_permissions.add(Permission.objects.get(codename="view_toolsetting"))
    assert client.get(PAGE).status_code == 200
    assert client.post(PAGE, {"listed": ["box/echo"]}).status_code == 403


def test_tools_off_and_a_broken_configuration_are_said(admin_client, settings, tmp_path):
    settings.CHAT_MCP_CONFIG = "off"
    assert "Tools are off" in admin_client.get(PAGE).content.decode()
    broken = tmp_path / "mcp.json"
    broken.write_text('{"mcpServers": {"x": {}}}')
    settings.CHAT_MCP_CONFIG = str(broken)
    html = admin_client.get(PAGE).content.decode()
    assert "CHAT_MCP_CONFIG cannot be used" in html
    runtime.tool_config_error = ""
