"""``ratewire mcp``: the MCP server for LLM agents, and its authorization over HTTP."""
