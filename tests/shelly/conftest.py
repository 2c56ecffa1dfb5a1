"""Shelly fixtures (defined in shelly_support.py, which test modules import by its own name)."""

from shelly_support import fleet_factory, threaded_fleet  # noqa: F401
