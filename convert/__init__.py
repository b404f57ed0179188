"""tnn.convert."""
