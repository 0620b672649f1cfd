"""Built-in kdengine plugin: superres (being written)."""
