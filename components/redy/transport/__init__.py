"""redy.transport."""
