"""chargectl.services."""
