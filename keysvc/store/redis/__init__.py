"""redis layer."""
