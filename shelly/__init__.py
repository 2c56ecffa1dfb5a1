"""chargectl.shelly."""
