"""Codec: exact round trips through every compression; every kind of damage is a CodecError."""

from __future__ import annotations

import zlib
from dataclasses import replace
from itertools import pairwise

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
    step = draw(st.sampled_from([1_000, 5_000, 30_000]))
    for _ in range(n):
        # Mostly on-time polls with jitter, sometimes a gap, a duplicate time or a clock step back.
        t += draw(st.integers(step - 50, step + 50) | st.integers(-60_000, 600_000))
        v, a, temp, up = draw(opt), draw(opt), draw(opt), draw(st.none() | st.integers(0, 10**8))
        out.append(
            Reading(
                mac=mac,
                ts_ms=t,
                power_w=draw(st.integers(-1000, 40_000)) / 10,
                energy_mwh=draw(st.integers(0, 10**12) | st.integers(0, 2**61)),
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
        epoch=draw(st.integers(0, 2**64 - 1)),
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
    """0.1 W, 1 mWh, 0.1 V, 1 mA, 0.1 degC; batch columns restarting per plug; time against the step."""
    a, b = "AABBCCDDEEFF", "001122334455"
    rows = (
        Reading(a, 1_000_000, 2300.4, 10_000, True, 230.1, 10.002, None, 0, 100),
        Reading(a, 1_005_000, 2300.9, 13_200, False, None, 10.5, 40.0, 1, 105),
        Reading(a, 1_010_040, 0.0, 16_500, True, 229.0, None, 40.0, 0, 110),
        Reading(b, 1_002_000, 5.0, 7, False, 229.5, None, None, 0, None),
    )
    msg = codec.telemetry_pb2.TelemetryBatch()
    msg.ParseFromString(codec.encode_batch(Batch("s", 1, rows, epoch=9)))
    assert not msg.series  # the per-plug layout is only read, no longer written
    assert list(msg.plug_macs) == [a, b] and list(msg.sample_counts) == [3, 1]
    assert msg.base_time_ms == 1_000_000
    # Gaps 5,000 and 5,040 ms: the median (upper of two) is the step; each gap is sent less the step.
    assert msg.time_step_ms == 5040
    assert list(msg.time_ms) == [0, -40, 0, 2000]
    # Power, voltage, current, temperature: differences running through the batch (plug b's first
    # sample against plug a's last).
    assert list(msg.power_dw) == [23004, 5, -23009, 50]
    # Energy and uptime restart per plug: the value, the first step, then the change of step.
    assert list(msg.energy_mwh) == [10_000, 3_200, 100, 7]
    # An absent value repeats the previous one (uptime: 0 at a plug's start); its bit is set.
    assert list(msg.voltage_dv) == [2301, 0, -11, 5] and msg.voltage_missing == bytes([0b0010])
    assert list(msg.current_ma) == [10002, 498, 0, 0] and msg.current_missing == bytes([0b1100])
    assert list(msg.temperature_dc) == [0, 400, 0, 0] and msg.temperature_missing == bytes([0b1001])
    assert list(msg.uptime_s) == [100, 5, 0, 0] and msg.uptime_missing == bytes([0b1000])
    assert msg.relay_on_bits == bytes([0b0101])
    assert list(msg.error_flags) == [0, 1, 0, 0]
    assert msg.epoch == 9
    assert codec.decode_batch(msg.SerializeToString()) == Batch("s", 1, rows, epoch=9)


def test_energy_counter_resets_and_jumps_reach_the_hub_exactly() -> None:
    # The energy column is what sessions are billed from. A Gen1 reboot resets the counter to 0, a
    # swapped plug reports a far larger one, a hostile plug runs it backwards: second differences
    # must carry every value exactly, per plug, with another plug's samples in between.
    a, b = "AABBCCDDEEFF", "001122334455"
    energies = [2_000_000_000, 2_000_002_800, 2_000_005_600, 0, 2_800, 10**15, 10**15, 5, 2**61]
    rows = [Reading(a, 1_000_000 + 5000 * i, 2016.0, e, True) for i, e in enumerate(energies)]
    rows += [Reading(b, 1_000_100 + 5000 * i, 0.0, 7_777_777, False) for i in range(3)]
    runs = codec.decode_runs(codec.encode_batch(Batch("s", 1, tuple(rows)))).runs
    assert runs[a].energy_mwh == energies
    assert runs[b].energy_mwh == [7_777_777] * 3
    # What a hub bills from the counter (positive steps; a reset restarts from 0) is unchanged.
    billed = sum(max(0, y - x) for x, y in pairwise(runs[a].energy_mwh[:4]))
    assert billed == 5_600


def test_a_batch_without_errors_or_optional_values_carries_no_such_columns() -> None:
    rows = tuple(Reading("AABBCCDDEEFF", 1_000_000 + 5000 * i, 0.0, 42, False) for i in range(9))
    msg = codec.telemetry_pb2.TelemetryBatch()
    msg.ParseFromString(codec.encode_batch(Batch("s", 1, rows)))
    assert list(msg.time_ms) == [0] * 9 and msg.time_step_ms == 5000
    assert list(msg.energy_mwh) == [42] + [0] * 8
    assert not msg.error_flags and not msg.voltage_dv and not msg.uptime_s and not msg.voltage_missing
    assert msg.relay_on_bits == b"\0\0"
    assert codec.decode_batch(msg.SerializeToString()).readings == rows


def test_readings_beyond_64_bits_are_a_codec_error_not_a_crash() -> None:
    rows = (Reading("AABBCCDDEEFF", 1, 0.0, 2**64, False),)
    with pytest.raises(CodecError, match="does not fit the wire format"):
        codec.encode_batch(Batch("s", 1, rows))


def _series_layout(batch: Batch) -> bytes:
    """What agents before batch columns sent: one PlugSeries of first differences per plug."""
    msg = codec.telemetry_pb2.TelemetryBatch(
        site_id=batch.site_id,
        batch_seq=batch.batch_seq,
        created_at_ms=batch.created_at_ms,
        agent_version=batch.agent_version,
        epoch=batch.epoch,
    )
    groups: dict[str, list[Reading]] = {}
    for r in batch.readings:
        groups.setdefault(r.mac, []).append(r)
    base = min((r.ts_ms for r in batch.readings), default=0)
    msg.base_time_ms = base

    def deltas(values: list[int]) -> list[int]:
        return [v - p for p, v in zip([0, *values], values, strict=False)]

    def bits(flags: list[bool]) -> bytes:
        return bytes(
            sum(1 << j for j, f in enumerate(flags[i : i + 8]) if f) for i in range(0, len(flags), 8)
        )

    def optional(values: list[float | int | None], scale: int) -> tuple[list[int], bytes]:
        if all(v is None for v in values):
            return [], bits([True] * len(values))
        ints, prev = [], 0
        for v in values:
            prev = prev if v is None else round(v * scale)
            ints.append(prev)
        missing = [v is None for v in values]
        return deltas(ints), bits(missing) if any(missing) else b""

    for index, (mac, rs) in enumerate(groups.items()):
        msg.plug_macs.append(mac)
        s = msg.series.add(plug_index=index)
        s.time_delta_ms.extend(deltas([r.ts_ms - base for r in rs]))
        s.power_dw_delta.extend(deltas([round(r.power_w * 10) for r in rs]))
        s.energy_mwh_delta.extend(deltas([r.energy_mwh for r in rs]))
        s.relay_on_bits = bits([r.relay_on for r in rs])
        if any(r.errors for r in rs):
            s.error_flags.extend(r.errors for r in rs)
        for column, missing, values, scale in (
            ("voltage_dv_delta", "voltage_missing", [r.voltage_v for r in rs], 10),
            ("current_ma_delta", "current_missing", [r.current_a for r in rs], 1000),
            ("temperature_dc_delta", "temperature_missing", [r.temperature_c for r in rs], 10),
            ("uptime_s_delta", "uptime_missing", [r.uptime_s for r in rs], 1),
        ):
            col, miss = optional(values, scale)
            getattr(s, column).extend(col)
            setattr(s, missing, miss)
    for change in batch.inventory:
        msg.inventory.add(mac=change.mac, kind=codec._INVENTORY_KIND[change.kind], at_ms=change.at_ms)
    return msg.SerializeToString()


@settings(max_examples=100, deadline=None)
@given(batch=batches())
def test_batches_of_agents_before_batch_columns_still_decode(batch: Batch) -> None:
    plain = replace(
        batch,
        inventory=tuple(InventoryChange(c.mac, c.kind, c.at_ms, switchable=False) for c in batch.inventory),
    )
    data = codec.seal(_series_layout(plain), codec.SCHEMA_TELEMETRY, KEY, "zstd")
    assert codec.unpack_telemetry(data, KEYRING) == plain
    assert codec.unpack_telemetry_runs(data, KEYRING).to_batch() == plain


def _expected_runs(batch: Batch) -> dict[str, dict[str, list[object]]]:
    """Per plug, each quantity of the batch's readings in order: what a run must carry."""
    out: dict[str, dict[str, list[object]]] = {}
    for r in batch.readings:
        cols = out.setdefault(r.mac, {})
        for name in PLUG_RUN_COLUMNS:
            cols.setdefault(name, []).append(getattr(r, name))
    return out


PLUG_RUN_COLUMNS = (
    "ts_ms",
    "power_w",
    "energy_mwh",
    "relay_on",
    "voltage_v",
    "current_a",
    "temperature_c",
    "errors",
    "uptime_s",
)


@settings(max_examples=150, deadline=None)
@given(batch=batches(), encoding=st.sampled_from(codec.ENCODINGS))
def test_runs_carry_exactly_what_decode_batch_does(batch: Batch, encoding: codec.Encoding) -> None:
    data, _ = codec.pack_telemetry(batch, KEY, encoding)
    runs = codec.unpack_telemetry_runs(data, KEYRING)
    decoded = codec.unpack_telemetry(data, KEYRING)
    # Against the input readings, value for value, and in plug order of first appearance...
    assert list(runs.runs) == list(dict.fromkeys(r.mac for r in batch.readings))
    got = {mac: {name: getattr(run, name) for name in PLUG_RUN_COLUMNS} for mac, run in runs.runs.items()}
    assert got == _expected_runs(batch)
    assert runs.sample_count == len(batch.readings)
    # ... and against decode_batch: the same readings, batch fields and inventory.
    assert got == _expected_runs(decoded)
    assert runs.to_batch() == decoded == batch
    assert (runs.site_id, runs.batch_seq, runs.epoch, runs.created_at_ms, runs.inventory) == (
        batch.site_id,
        batch.batch_seq,
        batch.epoch,
        batch.created_at_ms,
        batch.inventory,
    )
    for run in runs.runs.values():
        assert all(type(v) is int for v in run.ts_ms + run.energy_mwh + run.errors)
        assert all(type(v) is bool for v in run.relay_on)


@settings(max_examples=60, deadline=None)
@given(batch=batches(), data=st.data())
def test_interleaved_plugs_come_back_grouped_in_order_of_first_appearance(
    batch: Batch, data: st.DataObject
) -> None:
    # The agent's buffer interleaves plugs (one poll of every plug, then the next): the wire groups
    # them; every plug keeps its own samples, in its own order.
    queues = {
        mac: [r for r in batch.readings if r.mac == mac]
        for mac in dict.fromkeys(r.mac for r in batch.readings)
    }
    mixed: list[Reading] = []
    while any(queues.values()):
        mac = data.draw(st.sampled_from([m for m, q in queues.items() if q]))
        mixed.append(queues[mac].pop(0))
    runs = codec.decode_runs(codec.encode_batch(replace(batch, readings=tuple(mixed)))).runs
    assert list(runs) == list(dict.fromkeys(r.mac for r in mixed))
    for mac, run in runs.items():
        assert list(run.readings()) == [r for r in mixed if r.mac == mac]


def _columns(**fields: object) -> bytes:
    msg = codec.telemetry_pb2.TelemetryBatch(site_id="s", **fields)  # type: ignore[arg-type]
    return msg.SerializeToString()


GOOD = {
    "plug_macs": ["AABBCCDDEEFF", "001122334455"],
    "sample_counts": [2, 1],
    "time_ms": [0, 0, 10],
    "power_dw": [1, 1, 1],
    "energy_mwh": [5, 0, 7],
    "relay_on_bits": b"\x05",
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sample_counts": [3]}, "1 sample counts for 2 plugs"),
        ({"power_dw": [1, 1]}, "power_dw has 2 values for 3 samples"),
        ({"energy_mwh": []}, "energy_mwh has 0 values for 3 samples"),
        ({"voltage_dv": [1]}, "voltage_dv has 1 values for 3 samples"),
        ({"error_flags": [0, 0, 0, 0]}, "error_flags has 4 values for 3 samples"),
        ({"relay_on_bits": b""}, "relay bitmap has 0 bytes for 3 samples"),
        ({"voltage_dv": [1, 2, 3], "voltage_missing": b"\0\0"}, "voltage_missing has 2 bytes"),
        ({"plug_macs": ["AABBCCDDEEFF", "AABBCCDDEEFF"]}, "names plug AABBCCDDEEFF twice"),
        ({"sample_counts": [2, 3]}, "time_ms has 3 values for 5 samples"),
    ],
)
def test_hostile_batch_columns_name_the_problem(change: dict[str, object], message: str) -> None:
    assert len(codec.decode_batch(_columns(**GOOD)).readings) == 3
    with pytest.raises(CodecError, match=message):
        codec.decode_batch(_columns(**{**GOOD, **change}))
    with pytest.raises(CodecError, match=message):
        codec.decode_runs(_columns(**{**GOOD, **change}))


def test_values_beyond_64_bits_are_refused_not_passed_on() -> None:
    # Each entry fits sint64, but they add up past it: no store downstream could hold the result.
    one = {"plug_macs": ["AABBCCDDEEFF"], "sample_counts": [1], "power_dw": [0], "relay_on_bits": b"\0"}
    late = _columns(**one, base_time_ms=2**62, time_ms=[2**62], energy_mwh=[0])
    with pytest.raises(CodecError, match="ts_ms decodes to values beyond 64 bits"):
        codec.decode_runs(late)
    two = {**one, "sample_counts": [2], "power_dw": [0, 0], "time_ms": [0, 0]}
    big = _columns(**two, energy_mwh=[2**62, 2**62])
    with pytest.raises(CodecError, match="energy_mwh decodes to values beyond 64 bits"):
        codec.decode_batch(big)
    old = codec.telemetry_pb2.TelemetryBatch(site_id="s", plug_macs=["AABBCCDDEEFF"])
    old.series.add(
        plug_index=0,
        time_delta_ms=[0, 0],
        power_dw_delta=[0, 0],
        energy_mwh_delta=[2**62, 2**62],
        relay_on_bits=b"\0",
    )
    with pytest.raises(CodecError, match="energy_mwh decodes to values beyond 64 bits"):
        codec.decode_batch(old.SerializeToString())


def test_a_batch_with_both_layouts_is_refused() -> None:
    msg = codec.telemetry_pb2.TelemetryBatch()
    msg.ParseFromString(_columns(**GOOD))
    msg.series.add(
        plug_index=0, time_delta_ms=[1], power_dw_delta=[1], energy_mwh_delta=[1], relay_on_bits=b"\1"
    )
    with pytest.raises(CodecError, match="mixes per-plug series and batch columns"):
        codec.decode_batch(msg.SerializeToString())


def test_a_forged_batch_never_reaches_the_run_decoder() -> None:
    data, _ = codec.pack_telemetry(_batch(), KEY)
    env = codec.commands_pb2.Envelope()
    env.ParseFromString(data)
    env.key_id = OTHER_KEY.key_id  # the other site's key id: the signature no longer matches
    with pytest.raises(CodecError):
        codec.unpack_telemetry_runs(env.SerializeToString(), KEYRING)
    # A batch signed by site-b that claims site-a is refused too.
    forged, _ = codec.pack_telemetry(_batch(), OTHER_KEY)
    with pytest.raises(CodecError, match="signed by a key of site 'site-b'"):
        codec.unpack_telemetry_runs(forged, KEYRING)


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


def test_site_lease_round_trips_and_malformed_leases_are_refused() -> None:
    key = SigningKey.generate()
    ring = Keyring()
    ring.add_public(key.public_bytes, "s1")
    entries = (
        codec.LeasedPlug("A8032AB12345", "sess-1", 300),
        codec.LeasedPlug("A8032AB12346", "sess-2", 120),
    )
    lease = Command("lease-1", "s1", "", True, 1_000, 121_000, leased=entries)
    data, _ = codec.pack_command(lease, key)
    assert codec.unpack_command(data, ring, 2_000) == lease
    hostile = {
        "names a plug_mac": replace(lease, plug_mac="A8032AB12345"),
        "switches off": replace(lease, on=False),
        "a bad MAC": replace(lease, leased=(codec.LeasedPlug("nope", "s", 300),)),
        "no timer": replace(lease, leased=(codec.LeasedPlug("A8032AB12345", "s", 0),)),
        "a plug twice": replace(lease, leased=(entries[0], entries[0])),
    }
    for why, bad in hostile.items():
        with pytest.raises(CodecError):
            codec.decode_command(codec.encode_command(bad))
        assert why  # each case is refused by the decoder, before any plug is touched
