"""chargectl.services.hub."""
