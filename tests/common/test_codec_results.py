"""Command results inside a telemetry batch: round trip, the batch's site, and what a batch may not carry."""

from __future__ import annotations

import pytest

from chargectl.common import codec
from chargectl.common.codec import Batch, CommandOutcome
from chargectl.common.errors import CodecError
from chargectl.common.keys import Keyring, SigningKey
from chargectl.common.readings import Reading
from chargectl.gen.v1 import telemetry_pb2

KEY = SigningKey.generate()
KEYRING = Keyring()
KEYRING.add_public(KEY.public_bytes, "site-a")
MAC = "A8032AB12345"


def outcome(n: int, site: str = "site-a", **kw: object) -> CommandOutcome:
    base: dict[str, object] = {
        "command_id": f"{MAC}.{n}.1767225600000",
        "site_id": site,
        "plug_mac": MAC,
        "ok": True,
        "reason": "executed",
        "executed_at_ms": 1_767_225_600_000 + n,
        "relay_on": n % 2 == 0,
        "session_id": f"sess-{n}",
    }
    base.update(kw)
    return CommandOutcome(**base)  # type: ignore[arg-type]


def test_results_round_trip_in_a_signed_batch_with_readings() -> None:
    rows = tuple(Reading(MAC, 1_767_225_600_000 + 5000 * i, 10.0, 100 + i, True) for i in range(3))
    results = (
        outcome(2),
        outcome(3, ok=False, reason="device_error", relay_on=None, error="timeout"),
        outcome(4, reason="unknown_plug", ok=False, plug_mac="A8032AB99999", relay_on=None),
    )
    batch = Batch("site-a", 9, rows, results=results, epoch=5)
    data, _ = codec.pack_telemetry(batch, KEY)
    back = codec.unpack_telemetry(data, KEYRING)
    assert back == batch
    assert codec.unpack_telemetry_runs(data, KEYRING).results == results


def test_a_result_costs_its_fields_not_a_message() -> None:
    plain = codec.encode_batch(Batch("site-a", 1, ()))
    one = codec.encode_batch(Batch("site-a", 1, (), results=(outcome(2),)))
    # The site is the batch's: not repeated per result (a message of its own carries it).
    assert len(one) - len(plain) < len(codec.encode_outcome(outcome(2)))


def test_a_batch_cannot_carry_another_sites_result() -> None:
    with pytest.raises(CodecError, match="cannot carry a result of site 'site-b'"):
        codec.encode_batch(Batch("site-a", 1, (), results=(outcome(2, site="site-b"),)))
    # A hand-made batch that names another site in a result is malformed, whoever signed it.
    msg = telemetry_pb2.TelemetryBatch(site_id="site-a", batch_seq=1)
    msg.results.add(command_id="x", site_id="site-b", plug_mac=MAC, ok=True, reason="executed")
    with pytest.raises(CodecError, match="carries a result of site 'site-b'"):
        codec.decode_batch(msg.SerializeToString())
    msg = telemetry_pb2.TelemetryBatch(site_id="site-a", batch_seq=1)
    msg.results.add(command_id="x", plug_mac=MAC, ok=True)  # no reason
    with pytest.raises(CodecError, match="lacks a site_id or reason"):
        codec.decode_batch(msg.SerializeToString())


def test_a_result_that_names_the_batchs_own_site_is_accepted() -> None:
    msg = telemetry_pb2.TelemetryBatch(site_id="site-a", batch_seq=1)
    msg.results.add(command_id="x", site_id="site-a", plug_mac=MAC, ok=True, reason="executed")
    (res,) = codec.decode_batch(msg.SerializeToString()).results
    assert res.site_id == "site-a" and res.relay_on is None
