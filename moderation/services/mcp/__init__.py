"""The MCP server: the moderation lookups as tools (streamable HTTP, API-key auth)."""
