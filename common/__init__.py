"""Shared pieces: errors, config, clock, logging."""

from chargectl.common.clock import Clock, ManualClock, ScaledClock, SystemClock
from chargectl.common.config import Config, build, load_config
from chargectl.common.errors import (
    ChargectlError,
    CodecError,
    CommandRejected,
    ConfigError,
    DeviceAuthError,
    DeviceBusyError,
    DeviceError,
    DeviceTimeoutError,
    DeviceUnreachableError,
    InvalidResponse,
    NotFoundError,
    PaymentError,
    ProvisioningError,
    RpcCallError,
    StoreError,
    TransportError,
)

__all__ = [
    "ChargectlError",
    "Clock",
    "CodecError",
    "CommandRejected",
    "Config",
    "ConfigError",
    "DeviceAuthError",
    "DeviceBusyError",
    "DeviceError",
    "DeviceTimeoutError",
    "DeviceUnreachableError",
    "InvalidResponse",
    "ManualClock",
    "NotFoundError",
    "PaymentError",
    "ProvisioningError",
    "RpcCallError",
    "ScaledClock",
    "StoreError",
    "SystemClock",
    "TransportError",
    "build",
    "load_config",
]
