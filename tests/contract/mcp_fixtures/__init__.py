"""A tiny MCP server the contract tests start as a real process, over stdio and streamable HTTP."""
