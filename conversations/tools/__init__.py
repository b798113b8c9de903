"""Tools for the model, from Model Context Protocol (MCP) servers.

`load_config` reads the common `mcpServers` JSON file, `builtin_config` names the site's own
small server, and `ToolServers` lists the servers' tools and runs calls to them.
"""

from .catalog import Tool, ToolResult
from .config import ConfigError, ServerConfig, builtin_config, load_config
from .servers import ServerState, ToolServers

__all__ = [
    "ConfigError",
    "ServerConfig",
    "ServerState",
    "Tool",
    "ToolResult",
    "ToolServers",
    "builtin_config",
    "load_config",
]
