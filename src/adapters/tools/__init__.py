"""Tool registries: the todo toolset (the composite that mounts several lives in chatcore.tools)."""
