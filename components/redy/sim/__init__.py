"""redy.sim."""
