"""tnn.server."""
