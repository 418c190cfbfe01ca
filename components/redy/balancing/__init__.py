"""redy.balancing."""
