"""redy.devices."""
