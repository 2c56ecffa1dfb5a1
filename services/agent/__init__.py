"""chargectl.services.agent."""
