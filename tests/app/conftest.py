"""App-boundary fixtures: the Firestore emulator enforcing firestore.rules, stopped by process group."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import backends
import pytest

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "firestore.rules"


def start_firestore_with_rules(workdir: Path, rules: Path) -> backends.Server:
    """The Java Firestore emulator with ``--rules`` (same launch as ``backends.start_firestore``)."""
    port, ws = backends.free_port(), backends.free_port()
    argv = [
        "java",
        "-Duser.language=en",
        "-cp",
        str(backends.FIRESTORE_JAR),
        "com.google.cloud.datastore.emulator.firestore.CloudFirestore",
        "start",
        "--host=127.0.0.1",
        f"--port={port}",
        f"--websocket_port={ws}",
        "--database-mode=firestore-native",
        f"--rules={rules}",
    ]
    server = backends._spawn("firestore-rules", argv, port, workdir)
    server.env = {"FIRESTORE_EMULATOR_HOST": server.host}
    backends._wait_http(server, "/", 60, lambda status, body: status == 200)
    return server


@pytest.fixture(scope="session")
def firestore_rules_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[backends.Server]:
    """A Firestore emulator that evaluates the repository's firestore.rules for client requests."""
    reason = backends.missing("firestore")
    if reason:
        pytest.skip(reason)
    server = start_firestore_with_rules(tmp_path_factory.mktemp("firestore-rules"), RULES)
    try:
        yield server
    finally:
        server.stop()
