"""The one place protobuf messages are built and read.

- Telemetry: domain :class:`Batch` of :class:`Reading` ⇄ columnar ``TelemetryBatch`` bytes; or the
  bytes → :class:`BatchRuns` (per-plug columns, no object per reading) for a hub working per chunk.
- Commands: :class:`Command` ⇄ ``RelayCommand``; :class:`CommandOutcome` ⇄ ``CommandResult``, on its
  own (agents before results rode in batches) or in a batch's ``results``.
- Compression (``zstd`` default, ``zlib``, ``identity``) with a hard cap on decompressed size.
- Signed envelopes: compress → sign → ``Envelope``; verify → decompress → parse (a forged message is
  rejected before it is decompressed).
- Frontend documents (``PlugState``, ``ChargeSession``…) ⇄ Firestore-style dicts with the original
  field names.

Every failure is a :class:`CodecError` naming what was wrong.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from itertools import accumulate, chain, islice, pairwise, repeat
from itertools import compress as select
from operator import add, ge, sub, truediv
from typing import Any, Literal, TypeVar, cast

import zstandard
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from chargectl.common.errors import CodecError, SignatureError
from chargectl.common.keys import Keyring, SigningKey
from chargectl.common.readings import MAC_RE, Reading
from chargectl.gen.v1 import commands_pb2, common_pb2, frontend_pb2, telemetry_pb2

__all__ = [
    "DEFAULT_MAX_DECOMPRESSED",
    "ENCODINGS",
    "SCHEMA_COMMAND",
    "SCHEMA_RESULT",
    "SCHEMA_TELEMETRY",
    "Batch",
    "BatchRuns",
    "ChargeRequest",
    "ChargeSession",
    "Command",
    "CommandOutcome",
    "Encoding",
    "InventoryChange",
    "LeasedPlug",
    "LedgerEntry",
    "Money",
    "Opened",
    "PlugRun",
    "PlugState",
    "PlugStatus",
    "PublicKey",
    "RunsExtent",
    "Site",
    "Tariff",
    "UserAccount",
    "compress",
    "decode_batch",
    "decode_command",
    "decode_outcome",
    "decode_runs",
    "decompress",
    "encode_batch",
    "encode_command",
    "encode_outcome",
    "from_document",
    "open_envelope",
    "pack_command",
    "pack_outcome",
    "pack_telemetry",
    "seal",
    "to_document",
    "unpack_command",
    "unpack_outcome",
    "unpack_telemetry",
    "unpack_telemetry_runs",
]

Encoding = Literal["zstd", "zlib", "identity"]
ENCODINGS: tuple[Encoding, ...] = ("zstd", "zlib", "identity")
SCHEMA_TELEMETRY = "chargectl.v1.TelemetryBatch"
SCHEMA_COMMAND = "chargectl.v1.RelayCommand"
SCHEMA_RESULT = "chargectl.v1.CommandResult"
DEFAULT_MAX_DECOMPRESSED = 16 * 1024 * 1024
_SIG_CONTEXT = b"chargectl.v1\x00"

# Frontend documents are used as the generated messages themselves (they are documents, not domain
# logic); these names are the supported way to reach them.
Money = common_pb2.Money
PublicKey = common_pb2.PublicKey
PlugState = frontend_pb2.PlugState
PlugStatus = frontend_pb2.PlugStatus
ChargeRequest = frontend_pb2.ChargeRequest
ChargeSession = frontend_pb2.ChargeSession
UserAccount = frontend_pb2.UserAccount
LedgerEntry = frontend_pb2.LedgerEntry
Site = frontend_pb2.Site
Tariff = frontend_pb2.Tariff


# --------------------------------------------------------------------------- domain values


@dataclass(frozen=True, slots=True)
class InventoryChange:
    """A plug joined (``added``), changed address (``moved``) or vanished (``gone``)."""

    mac: str
    kind: Literal["added", "moved", "gone"]
    at_ms: int
    host: str = ""
    port: int = 0
    gen: int = 0
    model: str = ""
    firmware: str = ""
    switchable: bool = True


@dataclass(frozen=True)
class Batch:
    """One agent flush: readings grouped by plug (first-appearance order, time order within a plug)."""

    site_id: str
    batch_seq: int
    readings: tuple[Reading, ...]
    inventory: tuple[InventoryChange, ...] = ()
    created_at_ms: int = 0
    agent_version: str = ""
    epoch: int = 0  # the agent instance (see TelemetryBatch.epoch); 0 from agents that predate it
    results: tuple[CommandOutcome, ...] = ()  # command results since the last flush (site: the batch's)


@dataclass(frozen=True, slots=True)
class LeasedPlug:
    """One plug a site lease renews: its flip-back timer re-armed for ``auto_off_s``."""

    plug_mac: str
    session_id: str
    auto_off_s: int


@dataclass(frozen=True, slots=True)
class Command:
    """A relay command from the hub to one site's agent; with ``leased`` a site lease (no
    ``plug_mac``, ``on``): every listed plug's flip-back timer is re-armed."""

    command_id: str
    site_id: str
    plug_mac: str
    on: bool
    issued_at_ms: int
    expires_at_ms: int
    session_id: str = ""
    auto_off_s: int = 0
    leased: tuple[LeasedPlug, ...] = ()


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """What the agent did with a command (``reason`` is ``executed`` or why it was refused)."""

    command_id: str
    site_id: str
    plug_mac: str
    ok: bool
    reason: str
    executed_at_ms: int
    relay_on: bool | None = None
    error: str = ""
    session_id: str = ""


@dataclass(frozen=True, slots=True)
class Opened:
    """A verified envelope: who signed it and the decompressed payload."""

    site_id: str
    key_id: str
    schema: str
    payload: bytes = field(repr=False)


# --------------------------------------------------------------------------- compression


def compress(data: bytes, encoding: Encoding) -> bytes:
    if encoding == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(data)
    if encoding == "zlib":
        return zlib.compress(data, 6)
    if encoding == "identity":
        return data
    raise CodecError(f"unknown encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")


def decompress(data: bytes, encoding: str, max_size: int = DEFAULT_MAX_DECOMPRESSED) -> bytes:
    """Inflate ``data``; more than ``max_size`` bytes out is a decompression bomb and an error."""
    if encoding == "identity":
        if len(data) > max_size:
            raise CodecError(f"payload of {len(data)} bytes exceeds the {max_size}-byte limit")
        return data
    if encoding == "zstd":
        try:
            reader = zstandard.ZstdDecompressor().stream_reader(data)
            out = reader.read(max_size + 1)
            while len(out) <= max_size:
                chunk = reader.read(max_size + 1 - len(out))
                if not chunk:
                    break
                out += chunk
        except zstandard.ZstdError as exc:
            raise CodecError(f"corrupt zstd payload: {exc}") from None
        if len(out) > max_size:
            raise CodecError(f"zstd payload inflates beyond the {max_size}-byte limit")
        if not out and data:
            # zstd frames always decode to something or raise; an empty result means a truncated frame.
            raise CodecError("corrupt zstd payload: empty frame")
        return out
    if encoding == "zlib":
        d = zlib.decompressobj()
        try:
            out = d.decompress(data, max_size + 1)
        except zlib.error as exc:
            raise CodecError(f"corrupt zlib payload: {exc}") from None
        if len(out) > max_size or d.unconsumed_tail:
            raise CodecError(f"zlib payload inflates beyond the {max_size}-byte limit")
        if not d.eof:
            raise CodecError("corrupt zlib payload: truncated stream")
        return out
    raise CodecError(f"unknown encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")


# --------------------------------------------------------------------------- telemetry

# Each byte's 8 bits, least significant first: bitmaps expand a byte at a time, not a bit at a time.
_BYTE_BITS: tuple[tuple[bool, ...], ...] = tuple(
    tuple(bool(b & (1 << i)) for i in range(8)) for b in range(256)
)


def _bits(flags: Sequence[bool]) -> bytes:
    out = bytearray((len(flags) + 7) // 8)
    for i, flag in enumerate(flags):
        if flag:
            out[i >> 3] |= 1 << (i & 7)
    return bytes(out)


def _flags(mask: bytes, n: int) -> list[bool]:
    """The first ``n`` bits of ``mask`` (bits past its end are clear)."""
    out = list(chain.from_iterable(map(_BYTE_BITS.__getitem__, mask[: (n + 7) // 8])))
    del out[n:]
    if len(out) < n:
        out.extend([False] * (n - len(out)))
    return out


def _deltas(values: Iterable[int]) -> list[int]:
    """First differences, the first value against zero."""
    out: list[int] = []
    prev = 0
    for v in values:
        out.append(v - prev)
        prev = v
    return out


def _second_deltas(values: Iterable[int]) -> list[int]:
    """The first value, the first step, then each change of step (a steady rate costs zeros)."""
    d = _deltas(values)
    return d[:1] + _deltas(d[1:])


def _undelta(deltas: Iterable[int]) -> list[int]:
    return list(accumulate(deltas))


def _time_step(groups: Iterable[Sequence[Reading]]) -> int:
    """The usual gap between two samples of a plug (the median), which the time column is relative to."""
    gaps = sorted(b.ts_ms - a.ts_ms for rows in groups for a, b in pairwise(rows))
    if not gaps:
        return 0
    return min(max(gaps[len(gaps) // 2], 0), 2**32 - 1)


class _Optional:
    """One optional column of the whole batch while it is built (absent values repeat the previous one).

    ``per_plug``: second differences restarting at each plug (uptime); otherwise first differences
    running through the batch (a plug's first sample against the previous plug's last).
    """

    __slots__ = ("any_value", "missing", "per_plug", "prev", "scale", "values")

    def __init__(self, scale: int, per_plug: bool = False) -> None:
        self.values: list[int] = []
        self.missing: list[bool] = []
        self.any_value = False
        self.scale = scale
        self.per_plug = per_plug
        self.prev = 0

    def add(self, values: Sequence[float | int | None]) -> None:
        ints: list[int] = []
        prev = 0 if self.per_plug else self.prev
        for v in values:
            if v is None:
                self.missing.append(True)
            else:
                prev = round(v * self.scale)
                self.missing.append(False)
                self.any_value = True
            ints.append(prev)
        self.prev = prev
        self.values.extend(_second_deltas(ints) if self.per_plug else ints)

    def column(self) -> tuple[list[int], bytes]:
        if not self.any_value:
            return [], b""
        values = self.values if self.per_plug else _deltas(self.values)
        return values, (_bits(self.missing) if any(self.missing) else b"")


def encode_batch(batch: Batch) -> bytes:
    """Serialize ``batch`` into the ``TelemetryBatch`` wire form (batch columns, see telemetry.proto)."""
    msg = telemetry_pb2.TelemetryBatch(
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
    step = _time_step(groups.values())
    times: list[int] = []
    powers: list[int] = []
    energies: list[int] = []
    relay: list[bool] = []
    errors: list[int] = []
    volts, amps, temps, ups = _Optional(10), _Optional(1000), _Optional(10), _Optional(1, per_plug=True)
    for rows in groups.values():
        first = rows[0].ts_ms - base
        times.append(first)
        times.extend(b.ts_ms - a.ts_ms - step for a, b in pairwise(rows))
        powers.extend(round(r.power_w * 10) for r in rows)
        energies.extend(_second_deltas(r.energy_mwh for r in rows))
        relay.extend(r.relay_on for r in rows)
        errors.extend(r.errors for r in rows)
        volts.add([r.voltage_v for r in rows])
        amps.add([r.current_a for r in rows])
        temps.add([r.temperature_c for r in rows])
        ups.add([r.uptime_s for r in rows])
    try:
        msg.base_time_ms = base
        msg.time_step_ms = step
        msg.plug_macs.extend(groups)
        msg.sample_counts.extend(len(rows) for rows in groups.values())
        msg.time_ms.extend(times)
        msg.power_dw.extend(_deltas(powers))
        msg.energy_mwh.extend(energies)
        msg.relay_on_bits = _bits(relay)
        if any(errors):
            msg.error_flags.extend(errors)
        for values, missing_field, opt in (
            (msg.voltage_dv, "voltage_missing", volts),
            (msg.current_ma, "current_missing", amps),
            (msg.temperature_dc, "temperature_missing", temps),
            (msg.uptime_s, "uptime_missing", ups),
        ):
            col, missing = opt.column()
            values.extend(col)
            setattr(msg, missing_field, missing)
        for change in batch.inventory:
            msg.inventory.add(
                mac=change.mac,
                kind=_INVENTORY_KIND[change.kind],
                at_ms=change.at_ms,
                host=change.host,
                port=change.port,
                gen=change.gen,
                model=change.model,
                firmware=change.firmware,
                switchable=change.switchable,
            )
    except (ValueError, TypeError) as exc:  # protobuf's range checks (a value beyond 64 bits)
        raise CodecError(f"telemetry batch does not fit the wire format: {exc}") from None
    _put_results(msg, batch.site_id, batch.results)
    return msg.SerializeToString()


_INVENTORY_KIND = {
    "added": telemetry_pb2.PlugInventoryChange.KIND_ADDED,
    "moved": telemetry_pb2.PlugInventoryChange.KIND_MOVED,
    "gone": telemetry_pb2.PlugInventoryChange.KIND_GONE,
}
_INVENTORY_NAME: dict[int, Literal["added", "moved", "gone"]] = {v: k for k, v in _INVENTORY_KIND.items()}  # type: ignore[misc]


@dataclass(slots=True)
class PlugRun:
    """One plug's samples of a batch as columns (index i of every list is sample i, in time order).

    Values are exactly what :func:`decode_batch` puts in each :class:`Reading`; no object per sample.
    Read-only by convention: not frozen, because one is built per plug per batch on the hub's hot
    path and a frozen dataclass costs ten times as much to build.
    """

    mac: str
    ts_ms: list[int]
    power_w: list[float]
    energy_mwh: list[int]
    relay_on: list[bool]
    voltage_v: list[float | None]
    current_a: list[float | None]
    temperature_c: list[float | None]
    errors: list[int]
    uptime_s: list[int | None]

    def __len__(self) -> int:
        return len(self.ts_ms)

    def readings(self) -> Iterator[Reading]:
        """The run as :class:`Reading` objects (the slow path's view of the same samples)."""
        mac = self.mac
        for ts, p, e, on, v, a, t, err, up in zip(
            self.ts_ms,
            self.power_w,
            self.energy_mwh,
            self.relay_on,
            self.voltage_v,
            self.current_a,
            self.temperature_c,
            self.errors,
            self.uptime_s,
            strict=True,
        ):
            yield Reading(mac, ts, p, e, on, v, a, t, err, up)


@dataclass(frozen=True, slots=True)
class RunsExtent:
    """Bounds of every sample of a batch's runs, taken once over the decoded whole columns (so a hub
    can bound a batch without looking at each run)."""

    min_ts_ms: int
    max_ts_ms: int
    max_power_w: float
    ordered: bool  # every run's times strictly increase
    clean: bool  # optional columns all present or all absent; no negative power, energy, flags,
    # voltage, current or uptime (values decoded from integers: all finite)


@dataclass(frozen=True)
class BatchRuns:
    """A decoded batch as per-plug runs (plug order of the batch), for a hub that works per chunk."""

    site_id: str
    batch_seq: int
    runs: dict[str, PlugRun]
    inventory: tuple[InventoryChange, ...] = ()
    created_at_ms: int = 0
    agent_version: str = ""
    epoch: int = 0
    results: tuple[CommandOutcome, ...] = ()
    extent: RunsExtent | None = None  # the batch-column layout's; None: bound each run

    @property
    def sample_count(self) -> int:
        return sum(len(run) for run in self.runs.values())

    def to_batch(self) -> Batch:
        readings = tuple(chain.from_iterable(run.readings() for run in self.runs.values()))
        return Batch(
            site_id=self.site_id,
            batch_seq=self.batch_seq,
            readings=readings,
            inventory=self.inventory,
            created_at_ms=self.created_at_ms,
            agent_version=self.agent_version,
            epoch=self.epoch,
            results=self.results,
        )


def _check_len(name: str, column: Sized, n: int, optional: bool = False) -> None:
    if len(column) != n and not (optional and len(column) == 0):
        raise CodecError(f"telemetry column {name} has {len(column)} values for {n} samples")


def _check_mask(name: str, mask: bytes, n: int) -> None:
    if mask and len(mask) != (n + 7) // 8:
        raise CodecError(f"telemetry bitmap {name} has {len(mask)} bytes for {n} samples")


def _gone(mask: bytes, n: int) -> list[bool] | None:
    """An optional column's absent flags, ``None`` when every sample has its value."""
    return _flags(mask, n) if mask else None


def _scaled(values: list[int], gone: Sequence[bool] | None, n: int, scale: int) -> list[float | None]:
    if not values:
        return [None] * n
    if gone is None:
        return [v / scale for v in values]
    return [None if g else v / scale for v, g in zip(values, gone, strict=True)]


def _counted(values: list[int], gone: Sequence[bool] | None, n: int) -> list[int | None]:
    if not values:
        return [None] * n
    out: list[int | None] = list(values)
    if gone is not None:
        for i, g in enumerate(gone):
            if g:
                out[i] = None
    return out


_BATCH_COLUMNS = (
    "time_ms",
    "power_dw",
    "energy_mwh",
    "voltage_dv",
    "current_ma",
    "temperature_dc",
    "uptime_s",
    "error_flags",
)


def _runs_from_columns(msg: telemetry_pb2.TelemetryBatch) -> tuple[dict[str, PlugRun], RunsExtent | None]:
    counts = list(msg.sample_counts)
    if msg.series:
        if counts or any(len(getattr(msg, c)) for c in _BATCH_COLUMNS) or msg.relay_on_bits:
            raise CodecError("telemetry batch mixes per-plug series and batch columns")
        return _runs_from_series(msg), None
    if counts and len(counts) != len(msg.plug_macs):
        raise CodecError(f"telemetry batch has {len(counts)} sample counts for {len(msg.plug_macs)} plugs")
    n = sum(counts)
    for name in ("time_ms", "power_dw", "energy_mwh"):
        _check_len(name, getattr(msg, name), n)
    for name in ("voltage_dv", "current_ma", "temperature_dc", "uptime_s", "error_flags"):
        _check_len(name, getattr(msg, name), n, optional=True)
    if len(msg.relay_on_bits) != (n + 7) // 8:
        raise CodecError(f"telemetry relay bitmap has {len(msg.relay_on_bits)} bytes for {n} samples")
    for name in ("voltage_missing", "current_missing", "temperature_missing", "uptime_missing"):
        _check_mask(name, getattr(msg, name), n)
    if n == 0:
        return {}, None
    macs: list[str] = []  # plugs with samples, in batch order
    starts: list[int] = []  # where each one's samples begin
    k = 0
    for mac, count in zip(msg.plug_macs, counts, strict=True):
        if count:
            macs.append(mac)
            starts.append(k)
        k += count
    if len(set(macs)) != len(macs):
        twice = next(mac for mac in macs if macs.count(mac) > 1)
        raise CodecError(f"telemetry batch names plug {twice} twice")
    # Whole columns are decoded at once (C loops over the batch), then sliced per plug.
    raw_times = list(msg.time_ms)
    times = list(map(add, raw_times, repeat(msg.time_step_ms))) if msg.time_step_ms else raw_times.copy()
    base = msg.base_time_ms
    for k in starts:
        times[k] = raw_times[k] + base
    ts = _in_int64("ts_ms", _undelta_restarting(times, starts, n))
    power = list(map(truediv, accumulate(msg.power_dw), repeat(10)))
    energy = _in_int64("energy_mwh", _unsecond_restarting(list(msg.energy_mwh), starts, n))
    relay = _flags(msg.relay_on_bits, n)
    errors = list(msg.error_flags) or [0] * n
    volts = _optional_floats(msg.voltage_dv, msg.voltage_missing, n, 10)
    amps = _optional_floats(msg.current_ma, msg.current_missing, n, 1000)
    temps = _optional_floats(msg.temperature_dc, msg.temperature_missing, n, 10)
    ups: list[int | None] = [None] * n
    if msg.uptime_s:
        ups = list(_in_int64("uptime_s", _unsecond_restarting(list(msg.uptime_s), starts, n)))
        if msg.uptime_missing:
            ups = [None if g else v for v, g in zip(ups, _flags(msg.uptime_missing, n), strict=True)]
    runs: dict[str, PlugRun] = {}
    for mac, k, end in zip(macs, starts, [*starts[1:], n], strict=True):
        # Positional: this runs once per plug per batch on the hub's intake.
        runs[mac] = PlugRun(
            mac,
            ts[k:end],
            power[k:end],
            energy[k:end],
            relay[k:end],
            volts[k:end],
            amps[k:end],
            temps[k:end],
            errors[k:end],
            ups[k:end],
        )
    # Only a run's first sample may not be later than the one before it in the batch.
    firsts = set(starts)
    ordered = all(map(firsts.__contains__, select(range(1, n), map(ge, ts, islice(ts, 1, None)))))
    partial = msg.voltage_missing or msg.current_missing or msg.temperature_missing or msg.uptime_missing
    clean = (
        not partial
        and min(power) >= 0
        and min(energy) >= 0
        and min(errors) >= 0
        and (not msg.voltage_dv or min(cast("list[float]", volts)) >= 0)
        and (not msg.current_ma or min(cast("list[float]", amps)) >= 0)
        and (not msg.uptime_s or min(cast("list[int]", ups)) >= 0)
    )
    return runs, RunsExtent(min(ts), max(ts), max(power), ordered, clean)


def _in_int64(name: str, values: list[int]) -> list[int]:
    """``values``, if every one fits the 64-bit integers every store downstream holds."""
    if values and (min(values) < -(2**63) or max(values) >= 2**63):
        raise CodecError(f"telemetry column {name} decodes to values beyond 64 bits")
    return values


def _undelta_restarting(col: list[int], starts: Sequence[int], n: int) -> list[int]:
    """Undo first differences that restart against zero at each of ``starts`` (ascending, from 0).

    In C loops: the whole column is accumulated once, and each value less the running sum just before
    its run begins (repeated over the run) is its run's own sum.
    """
    cum = list(accumulate(col))
    before = [0, *map(cum.__getitem__, map(sub, starts[1:], repeat(1)))]
    lengths = map(sub, [*starts[1:], n], starts)
    return list(map(sub, cum, chain.from_iterable(map(repeat, before, lengths))))


def _unsecond_restarting(col: list[int], starts: Sequence[int], n: int) -> list[int]:
    """Undo second differences (value, step, change of step…) that restart at each of ``starts``."""
    # The steps: a plug's first entry stands alone (its value); the rest accumulate from its second.
    split = sorted({*starts, *(k + 1 for k in starts if k + 1 < n)})
    steps = _undelta_restarting(col, split, n)
    return _undelta_restarting(steps, starts, n)


def _optional_floats(col: Sequence[int], mask: bytes, n: int, scale: int) -> list[float | None]:
    """A decoded optional column (differences through the batch); all ``None`` when it is empty."""
    if not col:
        return [None] * n
    values: list[float | None] = list(map(truediv, accumulate(col), repeat(scale)))
    if mask:
        values = [None if g else v for v, g in zip(values, _flags(mask, n), strict=True)]
    return values


def _runs_from_series(msg: telemetry_pb2.TelemetryBatch) -> dict[str, PlugRun]:
    """The layout of agents before batch columns: one ``PlugSeries`` of first differences per plug."""
    runs: dict[str, PlugRun] = {}
    seen: set[int] = set()
    for s in msg.series:
        if s.plug_index >= len(msg.plug_macs):
            raise CodecError(f"telemetry series refers to plug index {s.plug_index} of {len(msg.plug_macs)}")
        if s.plug_index in seen:
            raise CodecError(f"telemetry batch has two series for plug index {s.plug_index}")
        seen.add(s.plug_index)
        mac = msg.plug_macs[s.plug_index]
        n = len(s.time_delta_ms)
        _check_len("power_dw_delta", s.power_dw_delta, n)
        _check_len("energy_mwh_delta", s.energy_mwh_delta, n)
        if len(s.relay_on_bits) != (n + 7) // 8:
            raise CodecError(f"telemetry relay bitmap has {len(s.relay_on_bits)} bytes for {n} samples")
        _check_len("error_flags", s.error_flags, n, optional=True)
        for name in ("voltage_dv_delta", "current_ma_delta", "temperature_dc_delta", "uptime_s_delta"):
            _check_len(name, getattr(s, name), n, optional=True)
        if n == 0:
            continue
        if mac in runs:
            raise CodecError(f"telemetry batch names plug {mac} twice")
        base = msg.base_time_ms
        runs[mac] = PlugRun(
            mac=mac,
            ts_ms=_in_int64("ts_ms", [base + t for t in accumulate(s.time_delta_ms)]),
            power_w=[p / 10 for p in accumulate(s.power_dw_delta)],
            energy_mwh=_in_int64("energy_mwh", _undelta(s.energy_mwh_delta)),
            relay_on=_flags(s.relay_on_bits, n),
            voltage_v=_scaled(_undelta(s.voltage_dv_delta), _gone(s.voltage_missing, n), n, 10),
            current_a=_scaled(_undelta(s.current_ma_delta), _gone(s.current_missing, n), n, 1000),
            temperature_c=_scaled(_undelta(s.temperature_dc_delta), _gone(s.temperature_missing, n), n, 10),
            errors=list(s.error_flags) or [0] * n,
            uptime_s=_counted(
                _in_int64("uptime_s", _undelta(s.uptime_s_delta)), _gone(s.uptime_missing, n), n
            ),
        )
    return runs


def decode_runs(data: bytes) -> BatchRuns:
    """Parse and validate ``TelemetryBatch`` bytes into per-plug runs (either wire layout)."""
    msg = telemetry_pb2.TelemetryBatch()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise CodecError(f"not a TelemetryBatch: {exc}") from None
    if not msg.site_id:
        raise CodecError("telemetry batch has no site_id")
    for mac in msg.plug_macs:
        if not MAC_RE.match(mac):
            raise CodecError(f"telemetry batch names an invalid plug MAC {mac!r}")
    runs, extent = _runs_from_columns(msg)
    inventory = tuple(
        InventoryChange(
            mac=c.mac,
            kind=_INVENTORY_NAME.get(c.kind, "added"),
            at_ms=c.at_ms,
            host=c.host,
            port=c.port,
            gen=c.gen,
            model=c.model,
            firmware=c.firmware,
            switchable=c.switchable,
        )
        for c in msg.inventory
    )
    return BatchRuns(
        site_id=msg.site_id,
        batch_seq=msg.batch_seq,
        runs=runs,
        inventory=inventory,
        created_at_ms=msg.created_at_ms,
        agent_version=msg.agent_version,
        epoch=msg.epoch,
        results=_results_of(msg),
        extent=extent,
    )


def decode_batch(data: bytes) -> Batch:
    """Parse and validate ``TelemetryBatch`` bytes into a :class:`Batch` (readings grouped by plug)."""
    return decode_runs(data).to_batch()


# --------------------------------------------------------------------------- commands


def encode_command(cmd: Command) -> bytes:
    return commands_pb2.RelayCommand(
        command_id=cmd.command_id,
        site_id=cmd.site_id,
        plug_mac=cmd.plug_mac,
        on=cmd.on,
        session_id=cmd.session_id,
        issued_at_ms=cmd.issued_at_ms,
        expires_at_ms=cmd.expires_at_ms,
        auto_off_s=cmd.auto_off_s,
        leased=[
            commands_pb2.LeasedPlug(plug_mac=p.plug_mac, session_id=p.session_id, auto_off_s=p.auto_off_s)
            for p in cmd.leased
        ],
    ).SerializeToString()


def decode_command(data: bytes) -> Command:
    msg = commands_pb2.RelayCommand()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise CodecError(f"not a RelayCommand: {exc}") from None
    if msg.leased:
        if not msg.command_id or not msg.site_id or msg.plug_mac or not msg.on:
            raise CodecError("site lease lacks a command_id or site_id, names a plug_mac or is not on")
        for p in msg.leased:
            if not MAC_RE.match(p.plug_mac) or p.auto_off_s <= 0:
                raise CodecError(f"site lease entry {p.plug_mac!r}: needs a valid MAC and auto_off_s > 0")
        if len({p.plug_mac for p in msg.leased}) != len(msg.leased):
            raise CodecError("site lease names a plug twice")
    elif not msg.command_id or not msg.site_id or not MAC_RE.match(msg.plug_mac):
        raise CodecError("relay command lacks a command_id, site_id or valid plug_mac")
    return Command(
        command_id=msg.command_id,
        site_id=msg.site_id,
        plug_mac=msg.plug_mac,
        on=msg.on,
        issued_at_ms=msg.issued_at_ms,
        expires_at_ms=msg.expires_at_ms,
        session_id=msg.session_id,
        auto_off_s=msg.auto_off_s,
        leased=tuple(LeasedPlug(p.plug_mac, p.session_id, p.auto_off_s) for p in msg.leased),
    )


def _result_message(res: CommandOutcome, site_id: str) -> commands_pb2.CommandResult:
    return commands_pb2.CommandResult(
        command_id=res.command_id,
        site_id=site_id,
        plug_mac=res.plug_mac,
        ok=res.ok,
        reason=res.reason,
        relay_on=bool(res.relay_on),
        relay_state_known=res.relay_on is not None,
        error=res.error,
        executed_at_ms=res.executed_at_ms,
        session_id=res.session_id,
    )


def _outcome_of(msg: commands_pb2.CommandResult, site_id: str) -> CommandOutcome:
    if not site_id or not msg.reason:
        raise CodecError("command result lacks a site_id or reason")
    return CommandOutcome(
        command_id=msg.command_id,
        site_id=site_id,
        plug_mac=msg.plug_mac,
        ok=msg.ok,
        reason=msg.reason,
        executed_at_ms=msg.executed_at_ms,
        relay_on=msg.relay_on if msg.relay_state_known else None,
        error=msg.error,
        session_id=msg.session_id,
    )


def encode_outcome(res: CommandOutcome) -> bytes:
    return _result_message(res, res.site_id).SerializeToString()


def decode_outcome(data: bytes) -> CommandOutcome:
    msg = commands_pb2.CommandResult()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise CodecError(f"not a CommandResult: {exc}") from None
    return _outcome_of(msg, msg.site_id)


def _put_results(msg: telemetry_pb2.TelemetryBatch, site_id: str, results: Sequence[CommandOutcome]) -> None:
    """Command results into a telemetry batch: their site is the batch's, so ``site_id`` stays empty."""
    for res in results:
        if res.site_id != site_id:
            raise CodecError(f"a batch of site {site_id!r} cannot carry a result of site {res.site_id!r}")
        msg.results.append(_result_message(res, ""))


def _results_of(msg: telemetry_pb2.TelemetryBatch) -> tuple[CommandOutcome, ...]:
    """A telemetry batch's command results, each of the batch's (signed) site; one that names another
    site makes the batch malformed (an agent never sends that)."""
    out = []
    for res in msg.results:
        if res.site_id and res.site_id != msg.site_id:
            raise CodecError(f"batch of site {msg.site_id!r} carries a result of site {res.site_id!r}")
        out.append(_outcome_of(res, msg.site_id))
    return tuple(out)


# --------------------------------------------------------------------------- envelopes


def _signed_bytes(schema: str, encoding: str, payload: bytes) -> bytes:
    return b"".join((_SIG_CONTEXT, schema.encode(), b"\x00", encoding.encode(), b"\x00", payload))


def seal(message: bytes, schema: str, signer: SigningKey, encoding: Encoding = "zstd") -> bytes:
    """Compress ``message``, sign it and wrap it in a serialized ``Envelope``."""
    payload = compress(message, encoding)
    return commands_pb2.Envelope(
        payload=payload,
        signature=signer.sign(_signed_bytes(schema, encoding, payload)),
        key_id=signer.key_id,
        schema=schema,
        encoding=encoding,
    ).SerializeToString()


def open_envelope(
    data: bytes,
    keyring: Keyring,
    expected_schema: str | None = None,
    now_ms: int | None = None,
    max_size: int = DEFAULT_MAX_DECOMPRESSED,
) -> Opened:
    """Verify the envelope's signature, then decompress its payload (bounded by ``max_size``)."""
    env = commands_pb2.Envelope()
    try:
        env.ParseFromString(data)
    except DecodeError as exc:
        raise CodecError(f"not an Envelope: {exc}") from None
    if not env.key_id or len(env.signature) != 64:
        raise SignatureError("bad_signature", "envelope is unsigned or its signature is malformed")
    if expected_schema is not None and env.schema != expected_schema:
        raise CodecError(f"expected a {expected_schema}, got {env.schema or 'no schema'!r}")
    if env.encoding not in ENCODINGS:
        raise CodecError(f"unknown encoding {env.encoding!r}")
    site_id = keyring.verify(
        env.key_id, _signed_bytes(env.schema, env.encoding, env.payload), env.signature, now_ms
    )
    return Opened(site_id, env.key_id, env.schema, decompress(env.payload, env.encoding, max_size))


def pack_telemetry(
    batch: Batch, signer: SigningKey, encoding: Encoding = "zstd"
) -> tuple[bytes, dict[str, str]]:
    """A bus message for ``batch``: signed envelope bytes and the attributes to publish it with."""
    data = seal(encode_batch(batch), SCHEMA_TELEMETRY, signer, encoding)
    return data, {
        "site_id": batch.site_id,
        "schema": SCHEMA_TELEMETRY,
        "encoding": encoding,
        "batch_seq": str(batch.batch_seq),
    }


def unpack_telemetry(
    data: bytes, keyring: Keyring, now_ms: int | None = None, max_size: int = DEFAULT_MAX_DECOMPRESSED
) -> Batch:
    """Verify and decode a telemetry message; the batch's site must be the signing key's site."""
    opened = open_envelope(data, keyring, SCHEMA_TELEMETRY, now_ms, max_size)
    batch = decode_batch(opened.payload)
    if batch.site_id != opened.site_id:
        raise SignatureError(
            "wrong_site",
            f"batch claims site {batch.site_id!r} but is signed by a key of site {opened.site_id!r}",
        )
    return batch


def unpack_telemetry_runs(
    data: bytes, keyring: Keyring, now_ms: int | None = None, max_size: int = DEFAULT_MAX_DECOMPRESSED
) -> BatchRuns:
    """:func:`unpack_telemetry` for the hub's per-chunk path: verified, then decoded into per-plug runs."""
    opened = open_envelope(data, keyring, SCHEMA_TELEMETRY, now_ms, max_size)
    runs = decode_runs(opened.payload)
    if runs.site_id != opened.site_id:
        raise SignatureError(  # as unpack_telemetry: a typed refusal, dead-lettered as unverified
            "wrong_site",
            f"batch claims site {runs.site_id!r} but is signed by a key of site {opened.site_id!r}",
        )
    return runs


def pack_command(
    cmd: Command, signer: SigningKey, encoding: Encoding = "identity"
) -> tuple[bytes, dict[str, str]]:
    data = seal(encode_command(cmd), SCHEMA_COMMAND, signer, encoding)
    return data, {"site_id": cmd.site_id, "schema": SCHEMA_COMMAND, "encoding": encoding}


def unpack_command(data: bytes, keyring: Keyring, now_ms: int | None = None) -> Command:
    opened = open_envelope(data, keyring, SCHEMA_COMMAND, now_ms, 64 * 1024)
    cmd = decode_command(opened.payload)
    if cmd.site_id != opened.site_id:
        raise SignatureError(
            "wrong_site", f"command for site {cmd.site_id!r} is signed by a key of site {opened.site_id!r}"
        )
    return cmd


def pack_outcome(
    res: CommandOutcome, signer: SigningKey, encoding: Encoding = "identity"
) -> tuple[bytes, dict[str, str]]:
    data = seal(encode_outcome(res), SCHEMA_RESULT, signer, encoding)
    return data, {"site_id": res.site_id, "schema": SCHEMA_RESULT, "encoding": encoding}


def unpack_outcome(data: bytes, keyring: Keyring, now_ms: int | None = None) -> CommandOutcome:
    opened = open_envelope(data, keyring, SCHEMA_RESULT, now_ms, 64 * 1024)
    res = decode_outcome(opened.payload)
    if res.site_id != opened.site_id:
        raise SignatureError(
            "wrong_site", f"result for site {res.site_id!r} is signed by a key of site {opened.site_id!r}"
        )
    return res


# --------------------------------------------------------------------------- frontend documents

M = TypeVar("M", bound=Message)


def to_document(msg: Message) -> dict[str, Any]:
    """A frontend message as a Firestore-style map: original field names, enums by name, int64 as int."""
    doc = json_format.MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _ints(doc, msg)


def _repeated(fd: Any) -> bool:
    flag = getattr(fd, "is_repeated", None)
    return bool(flag) if flag is not None else bool(fd.label == fd.LABEL_REPEATED)


def _ints(doc: dict[str, Any], msg: Message) -> dict[str, Any]:
    # json_format writes 64-bit integers as strings (a JSON rule); Firestore stores real integers.
    for fd in msg.DESCRIPTOR.fields:
        name = fd.name
        if name not in doc:
            continue
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry is False:
            if _repeated(fd):
                doc[name] = [_ints(d, m) for d, m in zip(doc[name], getattr(msg, name), strict=True)]
            else:
                doc[name] = _ints(doc[name], getattr(msg, name))
        elif fd.type in (fd.TYPE_INT64, fd.TYPE_UINT64, fd.TYPE_SINT64, fd.TYPE_FIXED64, fd.TYPE_SFIXED64):
            doc[name] = [int(v) for v in doc[name]] if _repeated(fd) else int(doc[name])
    return doc


def from_document(cls: type[M], doc: Mapping[str, Any]) -> M:
    """Parse a Firestore-style map back into ``cls``; unknown fields are ignored, bad values raise."""
    msg = cls()
    try:
        json_format.ParseDict(dict(doc), msg, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise CodecError(f"invalid {cls.DESCRIPTOR.name} document: {exc}") from None
    return msg
