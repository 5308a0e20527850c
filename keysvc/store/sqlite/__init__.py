"""sqlite layer."""
