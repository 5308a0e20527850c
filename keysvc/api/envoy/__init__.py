"""envoy layer."""
