"""redy.units."""
