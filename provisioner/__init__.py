"""chargectl.provisioner."""
