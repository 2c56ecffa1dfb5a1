"""chargectl.cli."""
