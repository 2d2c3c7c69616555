"""MCP in both directions: tools mounted from MCP servers, and the todo tools served over MCP."""
