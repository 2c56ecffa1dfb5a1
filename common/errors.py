"""The single exception tree of chargectl.

Adapters translate lower-layer errors (httpx, grpc, Stripe, sqlite) into these, raising ``from`` the
original. The CLI catches :class:`ChargectlError` once, prints one line and exits non-zero; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "ChargectlError",
    "CodecError",
    "CommandRejected",
    "ConfigError",
    "DeviceAuthError",
    "DeviceBusyError",
    "DeviceError",
    "DeviceMismatchError",
    "DeviceTimeoutError",
    "DeviceUnreachableError",
    "InvalidResponse",
    "NotFoundError",
    "PaymentError",
    "ProvisioningError",
    "RpcCallError",
    "SignatureError",
    "StoreError",
    "TransportError",
]


class ChargectlError(Exception):
    """Root of every expected failure; ``exit_code`` is what the CLI exits with."""

    exit_code: int = 1


class ConfigError(ChargectlError):
    """Configuration is missing or invalid; the message names the offending key."""


class CodecError(ChargectlError):
    """A payload could not be encoded, decoded, decompressed or verified."""


class SignatureError(CodecError):
    """A payload's signature is not acceptable; ``reason`` says why, as a refusal reason code:
    ``unknown_key`` (unknown, not yet valid or expired), ``bad_signature`` (missing or wrong) or
    ``wrong_site`` (signed by a key of another site than the payload names)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class TransportError(ChargectlError):
    """A message bus or network operation failed."""


class StoreError(ChargectlError):
    """A store (SQLite, Firestore, time series) operation failed."""


class NotFoundError(StoreError):
    """A requested record does not exist."""


class PaymentError(ChargectlError):
    """A payment provider operation failed."""


class ProvisioningError(ChargectlError):
    """Creating or changing a site's resources failed."""


class CommandRejected(ChargectlError):
    """A relay command was refused (bad signature, expired, duplicate, wrong site)."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or reason)
        self.reason = reason


class DeviceError(ChargectlError):
    """A Shelly device could not be read or switched."""


class DeviceTimeoutError(DeviceError):
    """The device did not answer within the request timeout."""


class DeviceUnreachableError(DeviceError):
    """The device refused or dropped the connection."""


class DeviceAuthError(DeviceError):
    """The device rejected our credentials (or needs credentials we do not have)."""


class DeviceBusyError(DeviceError):
    """The device kept answering HTTP 429 (too many requests) past our back-off budget."""


class DeviceMismatchError(DeviceError):
    """The address now answers with a different device (MAC) than expected — e.g. after a DHCP move."""


class InvalidResponse(DeviceError):
    """The device answered with something that is not the documented payload."""


class RpcCallError(DeviceError):
    """A Gen2+ RPC call returned a JSON-RPC error object."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"RPC error {code}: {message}")
        self.code = code
        self.rpc_message = message
