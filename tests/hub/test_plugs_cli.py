"""``chargectl plugs assign/release``: an operator binds a plug to a site; a running hub follows and
refuses the plug's readings from any other site, so the money follows the binding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hostile import World
from typer.testing import CliRunner

from chargectl.cli.app import app
from chargectl.services.adapters.sqlite_store import SqliteStore
from chargectl.services.wiring import store_path

runner = CliRunner()
A, B, MAC = "site-a", "site-b", "AABBCCDDEEFF"


def _cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = str(Path(sys.executable).parent / "chargectl")
    env = {**os.environ, "CHARGECTL_STATE_DIR": str(tmp)}
    return subprocess.run([exe, *args], capture_output=True, text=True, env=env, check=False)


async def test_assign_moves_a_plug_and_the_hub_follows(tmp_path: Path) -> None:
    env = {"CHARGECTL_STATE_DIR": str(tmp_path)}
    w = World(tmp_path)
    w.store.close()
    w.store = SqliteStore(store_path_for(tmp_path))  # the CLI's store file
    from chargectl.services.payments.ledger import Ledger

    w.ledger = Ledger(w.store)
    try:
        w.add_site(A)
        w.add_site(B)
        plug = w.add_plug(MAC, A)
        w.user("u1", 1000)
        hub = await w.start_hub()
        await w.run(30)
        r = runner.invoke(app, ["plugs", "assign", "aa:bb:cc:dd:ee:ff", "--site", B, "--json"], env=env)
        assert r.exit_code == 0, r.output
        assert json.loads(r.output) == {"plug_mac": MAC, "site_id": B, "previous_site_id": A}
        w.clock.advance(hub.settings.trust_refresh_s)
        hub.refresh_trust()  # the next trust refresh sees the touched site and re-reads the bindings
        assert hub.plugs[MAC].site_id == B
        # the old site can no longer start anything on it: its readings are refused
        last_seen = hub.plugs[MAC].state.last_ts_ms
        await w.run(10)  # two batches
        assert [d.attributes["reason"] for d in w.dead] == ["foreign_plug", "foreign_plug"]
        assert hub.plugs[MAC].state.last_ts_ms == last_seen
        plug.site = B
        w.dead.clear()
        await w.run(30)
        assert w.dead == [] and hub.plugs[MAC].site_id == B
        plug.power_w = 1800.0
        answer = await w.start_session("r1", MAC)
        assert answer.status == 2
        assert [c.on for c in w.sites[B].executed] == [True] and w.plugs[MAC].relay is True
        r = runner.invoke(app, ["plugs", "release", MAC, "--json"], env=env)
        assert r.exit_code == 0 and json.loads(r.output) == {"plug_mac": MAC, "released_from": B}
        assert w.store.plug_bindings() == {}
    finally:
        w.close()


def store_path_for(tmp: Path) -> Path:
    from chargectl.common.config import Config

    return store_path(Config(state_dir=tmp))


def test_bad_input_gets_one_line_and_a_nonzero_exit(tmp_path: Path) -> None:
    bad_mac = _cli(tmp_path, "plugs", "assign", "not-a-mac", "--site", A)
    assert (
        bad_mac.returncode != 0
        and "not a MAC address" in bad_mac.stderr
        and "Traceback" not in bad_mac.stderr
    )
    no_site = _cli(tmp_path, "plugs", "assign", MAC, "--site", "nowhere")
    assert (
        no_site.returncode != 0
        and "no site 'nowhere'" in no_site.stderr
        and "Traceback" not in no_site.stderr
    )
    unbound = _cli(tmp_path, "plugs", "release", MAC)
    assert unbound.returncode != 0 and "not bound" in unbound.stderr and "Traceback" not in unbound.stderr
    listing = _cli(tmp_path, "plugs", "--json")
    assert listing.returncode == 0 and json.loads(listing.stdout) == []


async def test_bindings_are_reread_only_when_a_site_changed(tmp_path: Path) -> None:
    w = World(tmp_path)
    try:
        w.add_site(A)
        w.add_plug(MAC, A)
        hub = await w.start_hub()
        await w.run(10)
        reads = {"n": 0}
        real = w.store.plug_bindings

        def counted() -> dict[str, str]:
            reads["n"] += 1
            return real()

        w.store.plug_bindings = counted  # type: ignore[method-assign]
        for _ in range(10):  # five minutes of trust refreshes: one read of the sites each, no bindings
            w.clock.advance(hub.settings.trust_refresh_s)
            hub.refresh_trust()
        assert reads["n"] == 0
        site = w.store.get_site(A)
        assert site is not None
        site.updated_at_ms += 1  # what `plugs assign/release` does
        w.store.put_site(site)
        w.clock.advance(hub.settings.trust_refresh_s)
        hub.refresh_trust()
        assert reads["n"] == 1
    finally:
        w.close()
