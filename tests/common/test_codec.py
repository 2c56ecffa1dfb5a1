"""Codec: exact round trips through every compression; every kind of damage is a CodecError."""

from __future__ import annotations

import zlib

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from chargectl.common import codec
from chargectl.common.codec import Batch, Command, CommandOutcome, InventoryChange
from chargectl.common.errors import CodecError
from chargectl.common.keys import Keyring, SigningKey
from chargectl.common.readings import Reading

KEY = SigningKey.generate()
OTHER_KEY = SigningKey.generate()
KEYRING = Keyring()
KEYRING.add_public(KEY.public_bytes, "site-a")
KEYRING.add_public(OTHER_KEY.public_bytes, "site-b")

macs = st.sampled_from(["AABBCCDDEEFF", "001122334455", "A8032AB12345", "C45BBE6A0001"])
opt = st.none() | st.integers(-50_000, 50_000)


@st.composite
def readings(draw: st.DrawFn, mac: str) -> list[Reading]:
    n = draw(st.integers(1, 12))
    t = draw(st.integers(1_600_000_000_000, 1_900_000_000_000))
    out = []
    for _ in range(n):
        t += draw(st.integers(0, 120_000))
        v, a, temp, up = draw(opt), draw(opt), draw(opt), draw(st.none() | st.integers(0, 10**8))
        out.append(
            Reading(
                mac=mac,
                ts_ms=t,
                power_w=draw(st.integers(-1000, 40_000)) / 10,
                energy_mwh=draw(st.integers(0, 10**12)),
                relay_on=draw(st.booleans()),
                voltage_v=None if v is None else v / 10,
                current_a=None if a is None else a / 1000,
                temperature_c=None if temp is None else temp / 10,
                errors=draw(st.integers(0, 2**16 - 1)),
                uptime_s=up,
            )
        )
    return out


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    plugs = draw(st.lists(macs, min_size=0, max_size=4, unique=True))
    rows: list[Reading] = []
    for mac in plugs:
        rows.extend(draw(readings(mac)))
    inventory = tuple(
        InventoryChange(
            mac=m,
            kind=draw(st.sampled_from(["added", "moved", "gone"])),
            at_ms=draw(st.integers(0, 10**13)),
            host="10.0.0.2",
            port=draw(st.integers(1, 65535)),
            gen=draw(st.integers(1, 4)),
            model="SNPL-00112EU",
            firmware="1.4.4",
            switchable=draw(st.booleans()),
        )
        for m in draw(st.lists(macs, max_size=2, unique=True))
    )
    return Batch(
        site_id="site-a",
        batch_seq=draw(st.integers(0, 2**63)),
        readings=tuple(rows),
        inventory=inventory,
        created_at_ms=draw(st.integers(0, 10**13)),
        agent_version="0.1.0",
    )


@settings(max_examples=150, deadline=None)
@given(batch=batches(), encoding=st.sampled_from(codec.ENCODINGS))
def test_batches_round_trip_exactly_through_every_encoding(batch: Batch, encoding: codec.Encoding) -> None:
    data, attrs = codec.pack_telemetry(batch, KEY, encoding)
    assert attrs == {
        "site_id": "site-a",
        "schema": codec.SCHEMA_TELEMETRY,
        "encoding": encoding,
        "batch_seq": str(batch.batch_seq),
    }
    assert codec.unpack_telemetry(data, KEYRING) == batch


@settings(max_examples=60, deadline=None)
@given(batch=batches(), encoding=st.sampled_from(codec.ENCODINGS), data=st.data())
def test_truncated_or_bit_flipped_messages_are_codec_errors(
    batch: Batch, encoding: codec.Encoding, data: st.DataObject
) -> None:
    wire, _ = codec.pack_telemetry(batch, KEY, encoding)
    cut = data.draw(st.integers(0, len(wire) - 1))
    with pytest.raises(CodecError):
        codec.unpack_telemetry(wire[:cut], KEYRING)
    pos = data.draw(st.integers(0, len(wire) * 8 - 1))
    flipped = bytearray(wire)
    flipped[pos // 8] ^= 1 << (pos % 8)
    with pytest.raises(CodecError):
        codec.unpack_telemetry(bytes(flipped), KEYRING)


def _batch() -> Batch:
    return Batch(
        "site-a",
        3,
        (Reading("AABBCCDDEEFF", 1_700_000_000_000, 2300.0, 5_000, True, 230.0, 10.0, 31.5, 0, 60),),
    )


def test_wrongly_signed_payload_is_rejected() -> None:
    wire, _ = codec.pack_telemetry(_batch(), KEY)
    env = codec.commands_pb2.Envelope()
    env.ParseFromString(wire)
    env.signature = OTHER_KEY.sign(env.payload)  # a valid signature, but by another key over other bytes
    with pytest.raises(CodecError, match="bad signature"):
        codec.unpack_telemetry(env.SerializeToString(), KEYRING)


def test_unknown_key_is_rejected() -> None:
    stranger = SigningKey.generate()
    wire, _ = codec.pack_telemetry(_batch(), stranger)
    with pytest.raises(CodecError, match="unknown signing key"):
        codec.unpack_telemetry(wire, KEYRING)


def test_key_of_another_site_cannot_speak_for_this_site() -> None:
    wire, _ = codec.pack_telemetry(_batch(), OTHER_KEY)  # site-b's key, batch says site-a
    with pytest.raises(CodecError, match="signed by a key of site 'site-b'"):
        codec.unpack_telemetry(wire, KEYRING)


def test_expired_key_is_rejected_when_time_is_given() -> None:
    ring = Keyring()
    ring.add_public(KEY.public_bytes, "site-a", not_after_ms=1_000)
    wire, _ = codec.pack_telemetry(_batch(), KEY)
    assert codec.unpack_telemetry(wire, ring, now_ms=999) == _batch()
    with pytest.raises(CodecError, match="expired"):
        codec.unpack_telemetry(wire, ring, now_ms=1_001)


@pytest.mark.parametrize("encoding", ["zstd", "zlib"])
def test_decompression_bomb_is_an_error_not_an_allocation(encoding: str) -> None:
    bomb = (
        zstandard.ZstdCompressor().compress(b"\0" * (64 << 20))
        if encoding == "zstd"
        else zlib.compress(b"\0" * (64 << 20))
    )
    assert len(bomb) < 100_000
    with pytest.raises(CodecError, match="limit"):
        codec.decompress(bomb, encoding, max_size=1 << 20)


def test_oversized_signed_payload_is_rejected() -> None:
    big = Batch(
        "site-a", 1, tuple(Reading("AABBCCDDEEFF", 1_700_000_000_000 + i, 1.0, i, True) for i in range(5000))
    )
    wire, _ = codec.pack_telemetry(big, KEY, "identity")
    with pytest.raises(CodecError, match="limit"):
        codec.unpack_telemetry(wire, KEYRING, max_size=1000)


def test_unknown_encoding_is_named() -> None:
    with pytest.raises(CodecError, match="unknown encoding 'brotli'"):
        codec.decompress(b"x", "brotli")
    with pytest.raises(CodecError, match="unknown encoding"):
        codec.compress(b"x", "brotli")  # type: ignore[arg-type]


def test_invalid_batches_name_the_problem() -> None:
    msg = codec.telemetry_pb2.TelemetryBatch(site_id="s", plug_macs=["nope"])
    with pytest.raises(CodecError, match="invalid plug MAC"):
        codec.decode_batch(msg.SerializeToString())
    msg = codec.telemetry_pb2.TelemetryBatch(site_id="s", plug_macs=["AABBCCDDEEFF"])
    msg.series.add(
        plug_index=0, time_delta_ms=[1, 2], power_dw_delta=[1], energy_mwh_delta=[1, 1], relay_on_bits=b"\0"
    )
    with pytest.raises(CodecError, match="power_dw_delta has 1 values for 2 samples"):
        codec.decode_batch(msg.SerializeToString())
    msg = codec.telemetry_pb2.TelemetryBatch(site_id="s", plug_macs=["AABBCCDDEEFF"])
    msg.series.add(plug_index=3)
    with pytest.raises(CodecError, match="plug index 3"):
        codec.decode_batch(msg.SerializeToString())
    with pytest.raises(CodecError, match="no site_id"):
        codec.decode_batch(b"")


def test_wire_values_are_the_documented_units() -> None:
    """0.1 W, 1 mWh, 0.1 V, 1 mA, 0.1 degC, and deltas against the previous sample."""
    rows = (
        Reading("AABBCCDDEEFF", 1_000_000, 2300.4, 10_000, True, 230.1, 10.002, None, 0, 100),
        Reading("AABBCCDDEEFF", 1_005_000, 2300.9, 13_200, False, None, 10.5, 40.0, 1, 105),
    )
    msg = codec.telemetry_pb2.TelemetryBatch()
    msg.ParseFromString(codec.encode_batch(Batch("s", 1, rows)))
    s = msg.series[0]
    assert msg.base_time_ms == 1_000_000
    assert list(s.time_delta_ms) == [0, 5000]
    assert list(s.power_dw_delta) == [23004, 5]
    assert list(s.energy_mwh_delta) == [10_000, 3_200]
    assert list(s.voltage_dv_delta) == [2301, 0] and s.voltage_missing == b"\x02"
    assert list(s.current_ma_delta) == [10002, 498] and s.current_missing == b""
    assert list(s.temperature_dc_delta) == [0, 400] and s.temperature_missing == b"\x01"
    assert s.relay_on_bits == b"\x01"
    assert list(s.error_flags) == [0, 1]


def test_commands_and_outcomes_round_trip_and_verify() -> None:
    cmd = Command("c1", "site-a", "AABBCCDDEEFF", True, 10, 20, "sess", 120)
    data, attrs = codec.pack_command(cmd, KEY)
    assert attrs["schema"] == codec.SCHEMA_COMMAND
    assert codec.unpack_command(data, KEYRING) == cmd
    with pytest.raises(CodecError):
        codec.unpack_telemetry(data, KEYRING)  # a command is not telemetry
    res = CommandOutcome("c1", "site-a", "AABBCCDDEEFF", False, "expired", 30, None, "too late", "sess")
    data, _ = codec.pack_outcome(res, KEY)
    assert codec.unpack_outcome(data, KEYRING) == res
    forged, _ = codec.pack_command(Command("c2", "site-a", "AABBCCDDEEFF", True, 1, 2), OTHER_KEY)
    with pytest.raises(CodecError, match="site 'site-b'"):
        codec.unpack_command(forged, KEYRING)


def test_frontend_documents_round_trip_with_original_names() -> None:
    s = codec.ChargeSession(
        session_id="s1",
        user_id="u",
        energy_mwh=12_345_678_901,
        status=codec.ChargeSession.STATUS_COMPLETED,
        cost=codec.Money(amount_minor=-250, currency="gbp"),
    )
    doc = codec.to_document(s)
    assert doc["energy_mwh"] == 12_345_678_901 and isinstance(doc["energy_mwh"], int)
    assert doc["cost"] == {"amount_minor": -250, "currency": "gbp"}
    assert doc["status"] == "STATUS_COMPLETED"
    assert codec.from_document(codec.ChargeSession, doc) == s
    site = codec.Site(
        site_id="a", agent_keys=[codec.PublicKey(key_id="k", public_key=b"\x01" * 32, not_after_ms=5)]
    )
    assert codec.from_document(codec.Site, codec.to_document(site)) == site
    with pytest.raises(CodecError, match="invalid PlugState document"):
        codec.from_document(codec.PlugState, {"power_w": "lots"})
