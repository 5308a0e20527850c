"""Services: validation hot path, admin lifecycle, event following. No protobuf."""
