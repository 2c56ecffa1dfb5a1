"""chargectl: operations toolkit for a pay-per-use charging network built from Shelly plugs."""

__version__ = "0.1.0"
__all__ = ["__version__"]
