"""chargectl.services.adapters."""
