"""tnn.clients."""
