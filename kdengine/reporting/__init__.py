"""Results, tables and figures, experiment tracking, progress, multi-seed summaries."""
