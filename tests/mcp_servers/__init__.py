"""Real MCP servers for tests/test_tools.py, built with the MCP SDK."""
