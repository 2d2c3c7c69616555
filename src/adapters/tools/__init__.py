"""Tool registries: the todo toolset and the composite that mounts several."""
