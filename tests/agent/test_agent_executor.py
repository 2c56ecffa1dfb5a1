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
