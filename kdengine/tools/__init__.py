"""Tools around a recipe or a run: validate (dry run), layers, export."""
