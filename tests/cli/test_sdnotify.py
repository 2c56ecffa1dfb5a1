"""sd_notify over a real AF_UNIX datagram socket, as systemd listens for it."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from chargectl.common import sdnotify


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    try:
        yield sock, str(path)
    finally:
        sdnotify.configure(None)
        sock.close()


def test_ready_watchdog_and_stopping_arrive_as_datagrams(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    sdnotify.configure(path)
    assert sdnotify.ready(status="serving 3 plugs") is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving 3 plugs"
    assert sdnotify.watchdog() is True
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert sdnotify.stopping() is True
    assert sock.recv(4096) == b"STOPPING=1"


def test_watchdog_pings_are_rate_limited_so_a_fast_loop_does_not_flood(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    sdnotify.configure(path)
    sent = [sdnotify.watchdog() for _ in range(50)]
    assert sent[0] is True and not any(sent[1:])
    assert sock.recv(4096) == b"WATCHDOG=1"
    sock.settimeout(0.05)
    with pytest.raises(TimeoutError):
        sock.recv(4096)


def test_abstract_socket_names_are_supported() -> None:
    name = f"chargectl-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(10)
    try:
        sdnotify.configure("@" + name)
        assert sdnotify.ready()
        assert sock.recv(4096) == b"READY=1"
    finally:
        sdnotify.configure(None)
        sock.close()


def test_without_a_socket_nothing_is_sent_and_nothing_raises() -> None:
    sdnotify.configure(None)
    assert sdnotify.configured_address() is None
    assert sdnotify.ready() is False and sdnotify.watchdog() is False


def test_a_dead_socket_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """systemd gone (or the socket path stale): the service keeps running; only a warning is logged."""
    sdnotify.configure(str(tmp_path / "nobody-listens.sock"))
    try:
        with caplog.at_level("WARNING", logger="chargectl"):
            assert sdnotify.ready() is False
    finally:
        sdnotify.configure(None)
    assert "cannot notify systemd" in caplog.text


def test_a_full_socket_drops_the_ping_instead_of_blocking_the_service(
    listener: tuple[socket.socket, str],
) -> None:
    """Nobody reads (a stalled systemd): sends fail fast and return False; the caller never blocks."""
    sock, path = listener
    sdnotify.configure(path)
    results = [sdnotify.notify("WATCHDOG=1") for _ in range(5000)]
    assert results[0] is True
    assert results[-1] is False  # the queue filled up and later pings were dropped, not waited on
    assert sock.recv(4096) == b"WATCHDOG=1"
