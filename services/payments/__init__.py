"""chargectl.services.payments."""
