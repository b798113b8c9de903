"""Which MCP servers the site offers tools from: the common `mcpServers` JSON file.

The same file format Claude Desktop, Cursor and VS Code read::

    {"mcpServers": {
        "search": {"url": "https://example.com/mcp",
                   "headers": {"Authorization": "Bearer ${TOKEN}"}},
        "files": {"command": "npx", "args": ["-y", "some-server"], "env": {"ROOT": "/srv"}}
    }}

`${NAME}` (or `${NAME:-default}`, or VS Code's `${env:NAME}`) in a value is replaced by
that environment variable, so secrets need not live in the file.
"""

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HTTP_TYPES = frozenset({"http", "streamable-http", "streamable_http", "streamableHttp"})
STDIO_TYPES = frozenset({"stdio"})
SSE_TYPES = frozenset({"sse"})
_VARIABLE = re.compile(r"\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class ServerConfig:
    """One MCP server: reached over streamable HTTP (`url`) or run as a subprocess (`command`)."""

    name: str
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict, hash=False)
    command: str = ""
    args: tuple[str, ...] = ()
    env: dict[str, str] | None = field(default=None, hash=False)

    @property
    def transport(self) -> str:
        return "http" if self.url else "stdio"

    def __repr__(self) -> str:
        # Header values and the environment may hold secrets: never print them.
        target = self.url or " ".join((self.command, *self.args))
        return f"ServerConfig(name={self.name!r}, transport={self.transport!r}, target={target!r})"


class ConfigError(Exception):
    """The tool server configuration cannot be used; the message says what is wrong and where."""


def builtin_config() -> dict[str, ServerConfig]:
    """The site's own small tool server (current time, arithmetic), started over stdio."""
    # The subprocess gets only a minimal environment; point it at this checkout so it finds
    # `conversations` however the project is installed.
    source_root = str(Path(__file__).resolve().parents[2])
    return {
        "builtin": ServerConfig(
            name="builtin",
            command=sys.executable,
            args=("-m", "conversations.tools.builtin"),
            env={"PYTHONPATH": source_root},
        )
    }


def load_config(path: str | Path) -> dict[str, ServerConfig]:
    """Read an `mcpServers` (or VS Code `servers`) JSON file; raise ConfigError on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the tool server configuration: {exc}") from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"
        ) from None
    except _DuplicateKey as exc:
        raise ConfigError(f"{path}: the key {exc.args[0]!r} appears twice") from None
    return parse_config(data, source=str(path))


def parse_config(data: Any, *, source: str = "configuration") -> dict[str, ServerConfig]:
    """Validate already-parsed JSON in the `mcpServers` format."""
    if not isinstance(data, dict):
        raise ConfigError(f'{source}: expected a JSON object with an "mcpServers" object')
    key = "mcpServers" if "mcpServers" in data else "servers" if "servers" in data else None
    if key is None:
        raise ConfigError(f'{source}: no "mcpServers" object at the top level')
    servers = data[key]
    if not isinstance(servers, dict):
        raise ConfigError(f"{source}: {key}: expected an object of servers, got {_kind(servers)}")
    configs = {}
    for name, entry in servers.items():
        where = f"{source}: {key}.{name}"
        if not name.strip():
            raise ConfigError(f"{source}: {key}: a server has an empty name")
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected an object, got {_kind(entry)}")
        if entry.get("disabled") is True:
            continue
        configs[name] = _server(name, entry, where)
    return configs


def _server(name: str, entry: dict, where: str) -> ServerConfig:
    kind = entry.get("type", entry.get("transport"))
    if kind is not None and not isinstance(kind, str):
        raise ConfigError(f"{where}.type: expected a string, got {_kind(kind)}")
    if kind in SSE_TYPES:
        raise ConfigError(
            f"{where}: the SSE transport is not supported (it is deprecated in MCP); "
            "use the server's streamable HTTP endpoint (often ending in /mcp) "
            'with "type": "http"'
        )
    if kind is not None and kind not in HTTP_TYPES | STDIO_TYPES:
        raise ConfigError(
            f'{where}.type: unknown transport {kind!r}; use "http" (with "url") '
            'or "stdio" (with "command")'
        )
    has_url, has_command = "url" in entry, "command" in entry
    if has_url and has_command:
        raise ConfigError(f'{where}: give either "url" or "command", not both')
    if not has_url and not has_command:
        raise ConfigError(f'{where}: a server needs "url" (streamable HTTP) or "command" (stdio)')
    if has_url:
        if kind in STDIO_TYPES:
            raise ConfigError(f'{where}: "type": "stdio" needs "command", not "url"')
        url = _string(entry["url"], f"{where}.url")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.url: expected an http:// or https:// URL")
        headers = _strings(entry.get("headers", {}), f"{where}.headers")
        return ServerConfig(name=name, url=url, headers=headers)
    if kind in HTTP_TYPES:
        raise ConfigError(f'{where}: "type": {kind!r} needs "url", not "command"')
    command = _string(entry["command"], f"{where}.command")
    args = entry.get("args", [])
    if not isinstance(args, list):
        raise ConfigError(f"{where}.args: expected a list of strings, got {_kind(args)}")
    args = tuple(_string(arg, f"{where}.args[{i}]", empty=True) for i, arg in enumerate(args))
    env = entry.get("env")
    env = None if env is None else _strings(env, f"{where}.env")
    return ServerConfig(name=name, command=command, args=args, env=env)


def _string(value: Any, where: str, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {_kind(value)}")
    value = _expand(value, where)
    if not empty and not value.strip():
        raise ConfigError(f"{where}: must not be empty")
    return value


def _strings(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected an object of strings, got {_kind(value)}")
    return {key: _string(item, f"{where}.{key}", empty=True) for key, item in value.items()}


def _expand(value: str, where: str) -> str:
    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name)
        if found is None or (found == "" and default is not None):
            if default is None:
                raise ConfigError(f"{where}: the environment variable {name} is not set")
            return default
        return found

    return _VARIABLE.sub(replace, value)


def _kind(value: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "true/false",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


class _DuplicateKey(Exception):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result
