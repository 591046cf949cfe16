"""evaluate-compatible metric modules."""
