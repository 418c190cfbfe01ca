"""redy.membership."""
