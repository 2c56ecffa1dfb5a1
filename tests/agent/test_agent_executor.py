"""Command verification and execution: each refusal has its own reason and touches no plug."""

from __future__ import annotations

from pathlib import Path

import pytest

from chargectl.common.codec import Command, pack_command
from chargectl.common.errors import DeviceTimeoutError
from chargectl.common.keys import Keyring, SigningKey
from chargectl.services.agent.durable import CommandJournal
from chargectl.services.agent.executor import CommandExecutor

SITE = "carpark-1"
MAC = "A8032AB12345"
NOW = 1_767_225_600_000


class Switches:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bool, int | None]] = []
        self.fail = False

    async def __call__(self, mac: str, on: bool, auto_off_s: int | None) -> bool:
        self.calls.append((mac, on, auto_off_s))
        if self.fail:
            raise DeviceTimeoutError("plug did not answer")
        return on


@pytest.fixture
def hub_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def setup(tmp_path: Path, hub_key: SigningKey) -> tuple[CommandExecutor, Switches]:
    keyring = Keyring()
    keyring.add_public(hub_key.public_bytes, SITE)
    switches = Switches()
    executor = CommandExecutor(
        SITE, keyring, CommandJournal(tmp_path / "journal"), 600, switches, lambda mac: mac == MAC
    )
    return executor, switches


def command(cid: str = "c1", **kw: object) -> Command:
    fields: dict[str, object] = {
        "command_id": cid,
        "site_id": SITE,
        "plug_mac": MAC,
        "on": True,
        "issued_at_ms": NOW - 1000,
        "expires_at_ms": NOW + 60_000,
        "session_id": "sess-1",
        "auto_off_s": 90,
    }
    fields.update(kw)
    return Command(**fields)  # type: ignore[arg-type]


async def test_signed_command_executes_with_auto_off(
    setup: tuple[CommandExecutor, Switches], hub_key: SigningKey
) -> None:
    executor, switches = setup
    data, _ = pack_command(command(), hub_key)
    outcome = await executor.handle(data, NOW)
    assert (outcome.ok, outcome.reason, outcome.relay_on) == (True, "executed", True)
    assert (outcome.command_id, outcome.plug_mac, outcome.session_id, outcome.site_id) == (
        "c1",
        MAC,
        "sess-1",
        SITE,
    )
    assert switches.calls == [(MAC, True, 90)]
    off, _ = pack_command(command("c2", on=False), hub_key)
    assert (await executor.handle(off, NOW)).relay_on is False
    assert switches.calls[-1] == (MAC, False, None)  # no flip-back timer on "off"


async def test_each_refusal_has_its_reason_and_touches_nothing(
    setup: tuple[CommandExecutor, Switches], hub_key: SigningKey
) -> None:
    executor, switches = setup
    stranger = SigningKey.generate()
    good, _ = pack_command(command("ok"), hub_key)
    await executor.handle(good, NOW)
    switches.calls.clear()
    tampered = bytearray(pack_command(command("t"), hub_key)[0])
    tampered[5] ^= 0xFF  # inside the payload: the signature no longer matches
    other_site_keyring_key = SigningKey.generate()
    cases = {
        "malformed": b"\x00not an envelope",
        "unknown_key": pack_command(command("u"), stranger)[0],
        "bad_signature": bytes(tampered),
        "expired": pack_command(command("e", expires_at_ms=NOW - 1), hub_key)[0],
        "duplicate": good,
        "unknown_plug": pack_command(command("p", plug_mac="AABBCCDDEEFF"), hub_key)[0],
    }
    for reason, data in cases.items():
        outcome = await executor.handle(data, NOW)
        assert (outcome.reason, outcome.ok, outcome.site_id) == (reason, False, SITE), (reason, outcome.error)
        assert outcome.relay_on is None
    # wrong_site: a command naming another site, signed by a key trusted for that other site too.
    executor.keyring.add_public(other_site_keyring_key.public_bytes, "other-site")
    outcome = await executor.handle(
        pack_command(command("w", site_id="other-site"), other_site_keyring_key)[0], NOW
    )
    assert outcome.reason == "wrong_site"
    # ...and a command for our site signed by the other site's key.
    outcome = await executor.handle(pack_command(command("w2"), other_site_keyring_key)[0], NOW)
    assert outcome.reason == "wrong_site"
    assert switches.calls == []


async def test_unsigned_envelope_is_bad_signature(setup: tuple[CommandExecutor, Switches]) -> None:
    from chargectl.common.codec import encode_command
    from chargectl.gen.v1 import commands_pb2

    executor, switches = setup
    unsigned = commands_pb2.Envelope(
        payload=encode_command(command("n")), schema="chargectl.v1.RelayCommand", encoding="identity"
    ).SerializeToString()
    outcome = await executor.handle(unsigned, NOW)
    assert outcome.reason == "bad_signature" and switches.calls == []


async def test_device_error_is_reported_and_the_id_stays_spent(
    setup: tuple[CommandExecutor, Switches], hub_key: SigningKey
) -> None:
    executor, switches = setup
    switches.fail = True
    data, _ = pack_command(command("d"), hub_key)
    outcome = await executor.handle(data, NOW)
    assert (outcome.ok, outcome.reason) == (False, "device_error") and "did not answer" in outcome.error
    switches.fail = False
    # At most once: the id was journalled before the relay was touched.
    assert (await executor.handle(data, NOW)).reason == "duplicate"
    assert len(switches.calls) == 1


async def test_executed_ids_survive_a_restart(tmp_path: Path, hub_key: SigningKey) -> None:
    keyring = Keyring()
    keyring.add_public(hub_key.public_bytes, SITE)
    switches = Switches()
    data, _ = pack_command(command("r"), hub_key)
    first = CommandExecutor(SITE, keyring, CommandJournal(tmp_path / "j"), 600, switches, lambda m: True)
    assert (await first.handle(data, NOW)).reason == "executed"
    second = CommandExecutor(SITE, keyring, CommandJournal(tmp_path / "j"), 600, switches, lambda m: True)
    assert (await second.handle(data, NOW + 5_000)).reason == "duplicate"
    assert len(switches.calls) == 1


async def test_clock_and_expiry_refusals(
    setup: tuple[CommandExecutor, Switches], hub_key: SigningKey
) -> None:
    """A Pi whose clock lags must not run a command the hub already gave up on, nor one without expiry."""
    executor, switches = setup
    cases = {
        # issued 121 s in our future: our clock lags the hub's by more than max_clock_skew_s (120 s)
        "clock_skew": command("skew", issued_at_ms=NOW + 121_000, expires_at_ms=NOW + 180_000),
        "bad_expiry": command("zero", expires_at_ms=0),  # proto3: a missing expiry reads as 0
        "expired": command("past", expires_at_ms=NOW - 1),
    }
    for reason, cmd in cases.items():
        outcome = await executor.handle(pack_command(cmd, hub_key)[0], NOW)
        assert (outcome.reason, outcome.ok) == (reason, False), outcome
    # Further ahead than lifetime (600 s) + skew (120 s): its id could not be forgotten in time.
    far = await executor.handle(pack_command(command("far", expires_at_ms=NOW + 721_000), hub_key)[0], NOW)
    assert far.reason == "bad_expiry"
    # Within the skew is fine (the hub's clock may run a little ahead).
    ok = await executor.handle(pack_command(command("near", issued_at_ms=NOW + 119_000), hub_key)[0], NOW)
    assert ok.reason == "executed"
    assert switches.calls == [(MAC, True, 90)]


async def test_a_key_not_valid_yet_is_unknown_key_and_a_bomb_is_malformed(
    tmp_path: Path, hub_key: SigningKey
) -> None:
    import zstandard

    from chargectl.common.codec import SCHEMA_COMMAND
    from chargectl.gen.v1 import commands_pb2

    keyring = Keyring()
    keyring.add_public(hub_key.public_bytes, SITE, not_before_ms=NOW + 3_600_000)
    switches = Switches()
    executor = CommandExecutor(SITE, keyring, CommandJournal(tmp_path / "j"), 600, switches, lambda m: True)
    outcome = await executor.handle(pack_command(command("early"), hub_key)[0], NOW)
    assert outcome.reason == "unknown_key" and "not valid yet" in outcome.error
    bomb = commands_pb2.Envelope(
        payload=zstandard.ZstdCompressor().compress(b"\x00" * (8 << 20)),
        schema=SCHEMA_COMMAND,
        encoding="zstd",
        key_id=hub_key.key_id,
        signature=b"\x01" * 64,
    ).SerializeToString()
    assert (await executor.handle(bomb, NOW)).reason == "malformed"
    assert switches.calls == []


async def test_the_journal_is_pruned_while_running(tmp_path: Path, hub_key: SigningKey) -> None:
    keyring = Keyring()
    keyring.add_public(hub_key.public_bytes, SITE)
    journal = CommandJournal(tmp_path / "j")
    executor = CommandExecutor(SITE, keyring, journal, 600, Switches(), lambda m: True)
    now = NOW
    for i in range(200):  # one command a minute for 200 minutes
        cmd = command(f"c{i}", issued_at_ms=now, expires_at_ms=now + 120_000)
        assert (await executor.handle(pack_command(cmd, hub_key)[0], now)).reason == "executed"
        now += 60_000
    # Each id is kept for its expiry (120 s) + the lifetime (600 s): at most 13 of the last minutes.
    assert len(journal) <= 13
    assert len((tmp_path / "j").read_text().splitlines()) <= 13
    # ...and the most recent ones are still refused as duplicates.
    last = command("c199", issued_at_ms=now - 60_000, expires_at_ms=now + 60_000)
    assert (await executor.handle(pack_command(last, hub_key)[0], now)).reason == "duplicate"


async def test_an_unwritable_journal_refuses_on_but_still_switches_off(
    setup: tuple[CommandExecutor, Switches], hub_key: SigningKey, tmp_path: Path
) -> None:
    from chargectl.common.errors import StoreError

    executor, switches = setup

    def full(command_id: str, keep_until_ms: int) -> None:
        raise StoreError("cannot write journal: No space left on device")

    executor.journal.record = full  # type: ignore[method-assign]
    on = await executor.handle(pack_command(command("on"), hub_key)[0], NOW)
    assert (on.reason, on.ok) == ("journal_error", False) and "No space left" in on.error
    off = await executor.handle(pack_command(command("off", on=False), hub_key)[0], NOW)
    assert (off.reason, off.ok, off.relay_on) == ("executed", True, False)
    assert switches.calls == [(MAC, False, None)]
    assert "No space left" in executor.journal_error


async def test_executed_at_is_when_the_plug_answered_not_when_the_command_arrived(
    tmp_path: Path, hub_key: SigningKey
) -> None:
    # A slow plug (2.5 s to answer the "on", then a timeout on the next command): the outcome says when
    # the relay was switched (or failed), which is what a user waiting for the plug sees and what the
    # request → relay latency is measured to; a refusal still says when the command was refused.
    clock = [NOW]

    class SlowPlug(Switches):
        async def __call__(self, mac: str, on: bool, auto_off_s: int | None) -> bool:
            clock[0] += 2_500
            return await super().__call__(mac, on, auto_off_s)

    keyring = Keyring()
    keyring.add_public(hub_key.public_bytes, SITE)
    switches = SlowPlug()
    executor = CommandExecutor(
        SITE,
        keyring,
        CommandJournal(tmp_path / "journal"),
        600,
        switches,
        lambda mac: mac == MAC,
        now_ms=lambda: clock[0],
    )
    data, _ = pack_command(command(), hub_key)
    outcome = await executor.handle(data, clock[0])
    assert outcome.ok and outcome.relay_on is True and outcome.executed_at_ms == NOW + 2_500
    switches.fail = True
    data, _ = pack_command(command("c2", on=False), hub_key)
    failed = await executor.handle(data, clock[0])
    assert not failed.ok and failed.reason == "device_error" and failed.executed_at_ms == NOW + 5_000
    stale, _ = pack_command(command("c3", expires_at_ms=NOW - 1), hub_key)
    refused = await executor.handle(stale, clock[0])
    assert refused.reason == "expired" and refused.executed_at_ms == NOW + 5_000
    assert switches.calls == [(MAC, True, 90), (MAC, False, None)]


async def test_an_off_runs_whatever_this_pis_clock_says_unless_the_plug_ran_a_newer_command(
    setup: tuple[CommandExecutor, Switches], hub_key: SigningKey
) -> None:
    """The Pi's clock steps by hours mid-session (no RTC, a bad time source). "On" and leases stay
    refused, so the plug's own flip-back timer ends anything the hub cannot renew; but the session's
    "off" must switch the relay off now, or the driver draws energy after the session was billed."""
    executor, switches = setup
    hour = 3_600_000
    on = await executor.handle(pack_command(command("on", issued_at_ms=NOW - 1000), hub_key)[0], NOW)
    assert on.reason == "executed" and switches.calls == [(MAC, True, 90)]
    # Two hours behind: the hub's "off" looks issued in our future. It runs.
    behind = NOW - 2 * hour
    off = command("off", on=False, issued_at_ms=NOW + 30_000, expires_at_ms=NOW + 630_000)
    outcome = await executor.handle(pack_command(off, hub_key)[0], behind)
    assert (outcome.reason, outcome.ok, outcome.relay_on) == ("executed", True, False)
    assert switches.calls[-1] == (MAC, False, None)
    # ...once: its replay is refused (the clock's reason stands: the journal holds its id). An "on"
    # from the same hub is still refused.
    replay = await executor.handle(pack_command(off, hub_key)[0], behind)
    assert (replay.reason, replay.ok) == ("clock_skew", False)
    again = command("on2", issued_at_ms=NOW + 40_000, expires_at_ms=NOW + 640_000)
    assert (await executor.handle(pack_command(again, hub_key)[0], behind)).reason == "clock_skew"
    assert switches.calls == [(MAC, True, 90), (MAC, False, None)]
    # Two hours ahead: a later session's "on" (while the clock was right), then its "off" looks expired.
    on3 = command("on3", issued_at_ms=NOW + 50_000, expires_at_ms=NOW + 650_000)
    assert (await executor.handle(pack_command(on3, hub_key)[0], NOW + 50_000)).reason == "executed"
    ahead = NOW + 3 * hour
    off3 = command("off3", on=False, issued_at_ms=NOW + 60_000, expires_at_ms=NOW + 660_000)
    assert (await executor.handle(pack_command(off3, hub_key)[0], ahead)).reason == "executed"
    # A stale "off" (issued before the plug's newest command, e.g. redelivered late) is still refused,
    # so it can never end a newer session; nor is one without an expiry run.
    on4 = command("on4", issued_at_ms=NOW + 70_000, expires_at_ms=NOW + 670_000)
    assert (await executor.handle(pack_command(on4, hub_key)[0], NOW + 70_000)).reason == "executed"
    stale = command("stale", on=False, issued_at_ms=NOW + 65_000, expires_at_ms=NOW + 665_000)
    assert (await executor.handle(pack_command(stale, hub_key)[0], ahead)).reason == "expired"
    bare = command("bare", on=False, issued_at_ms=NOW + 80_000, expires_at_ms=0)
    assert (await executor.handle(pack_command(bare, hub_key)[0], NOW + 80_000)).reason == "bad_expiry"
    assert switches.calls[2:] == [(MAC, True, 90), (MAC, False, None), (MAC, True, 90)]
    assert executor.clock_overrides == 2
