"""chargectl.cli.commands."""
