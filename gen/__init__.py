"""chargectl.gen."""
