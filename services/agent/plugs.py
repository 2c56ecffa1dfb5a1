"""What the agent needs from a plug and from discovery (the Shelly layer provides both)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from chargectl.common.readings import Reading

__all__ = ["Connector", "Discovery", "Plug", "PlugSighting"]


class Plug(Protocol):
    """A connected plug client, identified by its MAC."""

    @property
    def mac(self) -> str: ...

    @property
    def gen(self) -> int: ...

    @property
    def model(self) -> str: ...

    @property
    def switchable(self) -> bool: ...

    async def read(self) -> Reading:
        """One reading now; ``DeviceError`` if the plug cannot be read."""
        ...

    async def set_relay(self, on: bool, auto_off_s: int | None = None) -> bool:
        """Switch the relay (arming the plug's own flip-back timer if ``auto_off_s``); the observed state."""
        ...

    async def aclose(self) -> None: ...


class Connector(Protocol):
    """Connect to the plug at (host, port) and identify it; ``DeviceError`` if that fails.

    With ``mac``, the device must say it is that plug (``DeviceMismatchError`` otherwise) before any
    credential is sent to it.
    """

    def __call__(self, host: str, port: int, mac: str | None = None) -> Awaitable[Plug]: ...


@dataclass(frozen=True, slots=True)
class PlugSighting:
    """Discovery saw a plug appear, change address or disappear."""

    kind: Literal["added", "moved", "gone"]
    mac: str
    host: str = ""
    port: int = 80


Discovery = Callable[[], AsyncIterator[PlugSighting]]
"""Start continuous discovery; yields sightings until cancelled."""
