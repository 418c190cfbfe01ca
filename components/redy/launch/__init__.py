"""redy.launch."""
