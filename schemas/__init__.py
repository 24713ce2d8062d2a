"""Pydantic models shared by the sidecar, its plugins and its clients."""
