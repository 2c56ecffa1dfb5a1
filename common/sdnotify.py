"""systemd's notify protocol: one datagram per state change on the ``NOTIFY_SOCKET`` AF_UNIX socket.

A unit with ``Type=notify`` is "started" when the service sends ``READY=1``; with ``WatchdogSec`` it is
killed and restarted unless ``WATCHDOG=1`` arrives often enough. The CLI (the only layer that reads the
environment) calls :func:`configure` with ``$NOTIFY_SOCKET``; the services call :func:`ready`,
:func:`watchdog` and :func:`stopping`, which do nothing when no socket was configured (a terminal, a
test). Sending never raises: a lost notification must not take the service down (systemd restarts it
if the watchdog goes quiet, which is the point).
"""

from __future__ import annotations

import logging
import socket
import threading
import time

__all__ = ["configure", "configured_address", "notify", "ready", "stopping", "watchdog"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_address: str | None = None
_last_watchdog_s = 0.0
# A watchdog ping at most this often, however fast the loops that call :func:`watchdog` spin.
WATCHDOG_MIN_INTERVAL_S = 1.0


def configure(notify_socket: str | None) -> None:
    """Use ``notify_socket`` (the value of ``$NOTIFY_SOCKET``; ``@name`` is an abstract socket); None or
    an empty string turns notification off."""
    global _address, _last_watchdog_s
    with _lock:
        _address = notify_socket or None
        _last_watchdog_s = 0.0


def configured_address() -> str | None:
    return _address


def _sockaddr(address: str) -> str | bytes:
    if address.startswith("@"):
        return b"\0" + address[1:].encode()
    return address


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``, newline-separated assignments); True if it was sent."""
    address = _address
    if address is None:
        return False
    try:
        # Non-blocking: a receiver that is slow to read must never stall the service's event loop.
        with socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        ) as sock:
            sock.sendto(state.encode(), _sockaddr(address))
    except BlockingIOError:
        log.debug("systemd's notify socket %s is full; %s dropped", address, state.split("\n", 1)[0])
        return False
    except OSError as exc:
        log.warning("cannot notify systemd on %s: %s", address, exc.strerror or exc)
        return False
    return True


def ready(status: str | None = None) -> bool:
    """The service is up (``READY=1``, with an optional ``STATUS=`` line)."""
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def stopping() -> bool:
    """The service is shutting down (``STOPPING=1``)."""
    return notify("STOPPING=1")


def watchdog() -> bool:
    """The main loop is alive (``WATCHDOG=1``); rate-limited to one datagram a second."""
    global _last_watchdog_s
    if _address is None:
        return False
    now = time.monotonic()
    with _lock:
        if _last_watchdog_s and now - _last_watchdog_s < WATCHDOG_MIN_INTERVAL_S:
            return False
        _last_watchdog_s = now
    return notify("WATCHDOG=1")
