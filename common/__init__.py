"""Shared pieces: errors, config, clock, logging, codec, keys.

Names are loaded on first use (PEP 562) so that importing one submodule — the CLI imports only
``errors`` to build ``--help`` — does not pull in asyncio, tomllib and the rest.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Clock": "clock",
    "ManualClock": "clock",
    "ScaledClock": "clock",
    "SystemClock": "clock",
    "Config": "config",
    "build": "config",
    "load_config": "config",
    "ChargectlError": "errors",
    "CodecError": "errors",
    "CommandRejected": "errors",
    "ConfigError": "errors",
    "DeviceAuthError": "errors",
    "DeviceBusyError": "errors",
    "DeviceError": "errors",
    "DeviceTimeoutError": "errors",
    "DeviceUnreachableError": "errors",
    "InvalidResponse": "errors",
    "NotFoundError": "errors",
    "PaymentError": "errors",
    "ProvisioningError": "errors",
    "RpcCallError": "errors",
    "StoreError": "errors",
    "TransportError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'chargectl.common' has no attribute {name!r}")
    return getattr(importlib.import_module(f"chargectl.common.{module}"), name)
