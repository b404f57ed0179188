"""tnn.cli."""
