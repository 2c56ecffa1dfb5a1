"""Backend adapters behind ports; SDKs are imported lazily inside each adapter module."""

from chargectl.services.adapters.store import Store

__all__ = ["Store"]
