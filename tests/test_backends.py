"""The backend fixtures really start servers and really stop them (whole process group)."""

from __future__ import annotations

from pathlib import Path

import backends
import pytest


@pytest.mark.integration
def test_stop_kills_the_whole_process_group(tmp_path: Path) -> None:
    if backends.missing("drongo"):
        pytest.skip(backends.missing("drongo") or "")
    server = backends.start_drongo(tmp_path)
    assert backends.group_alive(server.pgid)
    server.stop()
    assert not backends.group_alive(server.pgid)
    assert server.proc.returncode is not None


@pytest.mark.integration
def test_session_backends_answer(
    pubsub_emulator: backends.Server,
    firestore_emulator: backends.Server,
    localstripe_server: backends.Server,
    victoria_metrics: backends.Server,
    drongo_server: backends.Server,
) -> None:
    import urllib.request

    for server in (pubsub_emulator, firestore_emulator, victoria_metrics):
        with urllib.request.urlopen(
            server.url + "/" if server.name != "victoriametrics" else server.url + "/health"
        ) as r:
            assert r.status == 200
    assert (
        len(
            {
                s.port
                for s in (
                    pubsub_emulator,
                    firestore_emulator,
                    localstripe_server,
                    victoria_metrics,
                    drongo_server,
                )
            }
        )
        == 5
    )
