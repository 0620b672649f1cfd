"""Built-in kdengine plugin: edges (being written)."""
