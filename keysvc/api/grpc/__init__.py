"""grpc layer."""
