"""Site leases in the executor, with the plugs played by the test: what each hostile lease does to the
relays (nothing, unless it is signed, current, for this site and journalled)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_agent_executor import MAC, NOW, SITE, Switches

from chargectl.common.codec import Command, LeasedPlug, pack_command
from chargectl.common.errors import DeviceTimeoutError, StoreError
from chargectl.common.keys import Keyring, SigningKey
from chargectl.services.agent.durable import CommandJournal
from chargectl.services.agent.executor import CommandExecutor

OTHER = "A8032AB12346"


class FlakySwitches(Switches):
    def __init__(self, failing: str) -> None:
        super().__init__()
        self.failing = failing

    async def __call__(self, mac: str, on: bool, auto_off_s: int | None) -> bool:
        self.calls.append((mac, on, auto_off_s))
        if mac == self.failing:
            raise DeviceTimeoutError("plug did not answer")
        return on


def _executor(tmp_path: Path, key: SigningKey, switches: Switches) -> CommandExecutor:
    ring = Keyring()
    ring.add_public(key.public_bytes, SITE)
    return CommandExecutor(
        SITE, ring, CommandJournal(tmp_path / "journal"), 600, switches, lambda mac: mac in (MAC, OTHER)
    )


def _lease(cid: str = "l1", **kw: object) -> Command:
    fields: dict[str, object] = {
        "command_id": cid,
        "site_id": SITE,
        "plug_mac": "",
        "on": True,
        "issued_at_ms": NOW - 1000,
        "expires_at_ms": NOW + 60_000,
        "leased": (LeasedPlug(MAC, "sess-1", 300), LeasedPlug(OTHER, "sess-2", 90)),
    }
    fields.update(kw)
    return Command(**fields)  # type: ignore[arg-type]


async def test_a_lease_rearms_each_plug_with_its_own_timer_and_is_not_replayed(tmp_path: Path) -> None:
    key, switches = SigningKey.generate(), Switches()
    executor = _executor(tmp_path, key, switches)
    data, _ = pack_command(_lease(), key)
    assert await executor.handle_many(data, NOW) == []  # all renewed: nothing to report
    assert sorted(switches.calls) == [(MAC, True, 300), (OTHER, True, 90)]
    replay = await executor.handle_many(data, NOW + 1000)  # a redelivery touches no plug
    assert [o.reason for o in replay] == ["duplicate"] and len(switches.calls) == 2


@pytest.mark.parametrize(
    ("why", "lease"),
    [
        ("expired", _lease(expires_at_ms=NOW - 1)),
        ("wrong_site", _lease(site_id="elsewhere")),
        ("clock_skew", _lease(issued_at_ms=NOW + 600_000, expires_at_ms=NOW + 660_000)),
    ],
)
async def test_a_hostile_lease_switches_nothing(tmp_path: Path, why: str, lease: Command) -> None:
    key, switches = SigningKey.generate(), Switches()
    data, _ = pack_command(lease, key)
    outcomes = await _executor(tmp_path, key, switches).handle_many(data, NOW)
    assert [o.reason for o in outcomes] == [why] and switches.calls == []


async def test_a_lease_signed_by_another_key_switches_nothing(tmp_path: Path) -> None:
    switches = Switches()
    data, _ = pack_command(_lease(), SigningKey.generate())
    outcomes = await _executor(tmp_path, SigningKey.generate(), switches).handle_many(data, NOW)
    assert [o.reason for o in outcomes] == ["unknown_key"] and switches.calls == []


async def test_an_unwritable_journal_refuses_the_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, switches = SigningKey.generate(), Switches()
    executor = _executor(tmp_path, key, switches)

    def broken(command_id: str, keep_until_ms: int) -> None:
        raise StoreError("disk full")

    monkeypatch.setattr(executor.journal, "record", broken)
    data, _ = pack_command(_lease(), key)
    outcomes = await executor.handle_many(data, NOW)
    assert [o.reason for o in outcomes] == ["journal_error"] and switches.calls == []


async def test_one_plug_that_does_not_answer_is_reported_the_other_renewed(tmp_path: Path) -> None:
    key, switches = SigningKey.generate(), FlakySwitches(OTHER)
    data, _ = pack_command(_lease(), key)
    outcomes = await _executor(tmp_path, key, switches).handle_many(data, NOW)
    assert [(o.plug_mac, o.ok, o.reason, o.command_id) for o in outcomes] == [
        (OTHER, False, "device_error", "l1")
    ]
    assert (MAC, True, 300) in switches.calls


async def test_a_lease_older_than_an_executed_off_leaves_that_plug_off(tmp_path: Path) -> None:
    key, switches = SigningKey.generate(), Switches()
    executor = _executor(tmp_path, key, switches)
    off = Command("off-1", SITE, MAC, False, NOW - 500, NOW + 60_000, "sess-1")
    assert (await executor.handle(pack_command(off, key)[0], NOW)).ok
    stale, _ = pack_command(_lease(issued_at_ms=NOW - 1000), key)  # issued before the off
    assert await executor.handle_many(stale, NOW) == []
    assert (MAC, True, 300) not in switches.calls and (OTHER, True, 90) in switches.calls
    fresh, _ = pack_command(_lease("l2", issued_at_ms=NOW), key)  # a newer lease names it again
    await executor.handle_many(fresh, NOW)
    assert (MAC, True, 300) in switches.calls
