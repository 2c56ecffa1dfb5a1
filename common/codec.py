"""The one place protobuf messages are built and read.

- Telemetry: domain :class:`Batch` of :class:`Reading` ⇄ columnar ``TelemetryBatch`` bytes.
- Commands: :class:`Command` ⇄ ``RelayCommand``; :class:`CommandOutcome` ⇄ ``CommandResult``.
- Compression (``zstd`` default, ``zlib``, ``identity``) with a hard cap on decompressed size.
- Signed envelopes: compress → sign → ``Envelope``; verify → decompress → parse (a forged message is
  rejected before it is decompressed).
- Frontend documents (``PlugState``, ``ChargeSession``…) ⇄ Firestore-style dicts with the original
  field names.

Every failure is a :class:`CodecError` naming what was wrong.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

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
    "ChargeRequest",
    "ChargeSession",
    "Command",
    "CommandOutcome",
    "Encoding",
    "InventoryChange",
    "LedgerEntry",
    "Money",
    "Opened",
    "PlugState",
    "PlugStatus",
    "PublicKey",
    "Site",
    "Tariff",
    "UserAccount",
    "compress",
    "decode_batch",
    "decode_command",
    "decode_outcome",
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


@dataclass(frozen=True, slots=True)
class Command:
    """A relay command from the hub to one site's agent."""

    command_id: str
    site_id: str
    plug_mac: str
    on: bool
    issued_at_ms: int
    expires_at_ms: int
    session_id: str = ""
    auto_off_s: int = 0


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


def _bits(flags: Sequence[bool]) -> bytes:
    out = bytearray((len(flags) + 7) // 8)
    for i, flag in enumerate(flags):
        if flag:
            out[i >> 3] |= 1 << (i & 7)
    return bytes(out)


def _bit(mask: bytes, i: int) -> bool:
    return bool(mask[i >> 3] & (1 << (i & 7))) if (i >> 3) < len(mask) else False


def _deltas(values: Iterable[int]) -> list[int]:
    out: list[int] = []
    prev = 0
    for v in values:
        out.append(v - prev)
        prev = v
    return out


def _undelta(deltas: Iterable[int]) -> list[int]:
    out: list[int] = []
    acc = 0
    for d in deltas:
        acc += d
        out.append(acc)
    return out


def _optional_column(values: Sequence[float | int | None], scale: int) -> tuple[list[int], bytes]:
    missing = [v is None for v in values]
    if all(missing):
        return [], b""
    ints: list[int] = []
    prev = 0
    for v in values:
        cur = prev if v is None else round(v * scale)
        ints.append(cur)
        prev = cur
    return _deltas(ints), (_bits(missing) if any(missing) else b"")


def encode_batch(batch: Batch) -> bytes:
    """Serialize ``batch`` into the columnar ``TelemetryBatch`` wire form."""
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
    msg.base_time_ms = base
    for index, (mac, rows) in enumerate(groups.items()):
        msg.plug_macs.append(mac)
        s = msg.series.add(plug_index=index)
        s.time_delta_ms.extend(_deltas(r.ts_ms - base for r in rows))
        s.power_dw_delta.extend(_deltas(round(r.power_w * 10) for r in rows))
        s.energy_mwh_delta.extend(_deltas(r.energy_mwh for r in rows))
        s.relay_on_bits = _bits([r.relay_on for r in rows])
        if any(r.errors for r in rows):
            s.error_flags.extend(r.errors for r in rows)
        col, miss = _optional_column([r.voltage_v for r in rows], 10)
        s.voltage_dv_delta.extend(col)
        s.voltage_missing = miss if col else _bits([True] * len(rows))
        col, miss = _optional_column([r.current_a for r in rows], 1000)
        s.current_ma_delta.extend(col)
        s.current_missing = miss if col else _bits([True] * len(rows))
        col, miss = _optional_column([r.temperature_c for r in rows], 10)
        s.temperature_dc_delta.extend(col)
        s.temperature_missing = miss if col else _bits([True] * len(rows))
        col, miss = _optional_column([r.uptime_s for r in rows], 1)
        s.uptime_s_delta.extend(col)
        s.uptime_missing = miss if col else _bits([True] * len(rows))
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
    return msg.SerializeToString()


_INVENTORY_KIND = {
    "added": telemetry_pb2.PlugInventoryChange.KIND_ADDED,
    "moved": telemetry_pb2.PlugInventoryChange.KIND_MOVED,
    "gone": telemetry_pb2.PlugInventoryChange.KIND_GONE,
}
_INVENTORY_NAME: dict[int, Literal["added", "moved", "gone"]] = {v: k for k, v in _INVENTORY_KIND.items()}  # type: ignore[misc]


def _read_optional(
    deltas: Sequence[int], missing: bytes, n: int, scale: int, name: str
) -> list[float | None]:
    if not deltas:
        return [None] * n
    if len(deltas) != n:
        raise CodecError(f"telemetry column {name} has {len(deltas)} values for {n} samples")
    values = _undelta(deltas)
    return [None if _bit(missing, i) else values[i] / scale for i in range(n)]


def decode_batch(data: bytes) -> Batch:
    """Parse and validate ``TelemetryBatch`` bytes into a :class:`Batch`."""
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
    readings: list[Reading] = []
    seen: set[int] = set()
    for s in msg.series:
        if s.plug_index >= len(msg.plug_macs):
            raise CodecError(f"telemetry series refers to plug index {s.plug_index} of {len(msg.plug_macs)}")
        if s.plug_index in seen:
            raise CodecError(f"telemetry batch has two series for plug index {s.plug_index}")
        seen.add(s.plug_index)
        mac = msg.plug_macs[s.plug_index]
        n = len(s.time_delta_ms)
        for name, col in (("power_dw_delta", s.power_dw_delta), ("energy_mwh_delta", s.energy_mwh_delta)):
            if len(col) != n:
                raise CodecError(f"telemetry column {name} has {len(col)} values for {n} samples")
        if len(s.relay_on_bits) != (n + 7) // 8:
            raise CodecError(f"telemetry relay bitmap has {len(s.relay_on_bits)} bytes for {n} samples")
        if s.error_flags and len(s.error_flags) != n:
            raise CodecError(f"telemetry column error_flags has {len(s.error_flags)} values for {n} samples")
        times = _undelta(s.time_delta_ms)
        powers = _undelta(s.power_dw_delta)
        energies = _undelta(s.energy_mwh_delta)
        volts = _read_optional(s.voltage_dv_delta, s.voltage_missing, n, 10, "voltage_dv_delta")
        amps = _read_optional(s.current_ma_delta, s.current_missing, n, 1000, "current_ma_delta")
        temps = _read_optional(s.temperature_dc_delta, s.temperature_missing, n, 10, "temperature_dc_delta")
        ups = _read_optional(s.uptime_s_delta, s.uptime_missing, n, 1, "uptime_s_delta")
        errors = list(s.error_flags) or [0] * n
        base = msg.base_time_ms
        bits = s.relay_on_bits
        for i in range(n):
            up = ups[i]
            readings.append(
                Reading(
                    mac=mac,
                    ts_ms=base + times[i],
                    power_w=powers[i] / 10,
                    energy_mwh=energies[i],
                    relay_on=_bit(bits, i),
                    voltage_v=volts[i],
                    current_a=amps[i],
                    temperature_c=temps[i],
                    errors=errors[i],
                    uptime_s=None if up is None else int(up),
                )
            )
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
    return Batch(
        site_id=msg.site_id,
        batch_seq=msg.batch_seq,
        readings=tuple(readings),
        inventory=inventory,
        created_at_ms=msg.created_at_ms,
        agent_version=msg.agent_version,
        epoch=msg.epoch,
    )


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
    ).SerializeToString()


def decode_command(data: bytes) -> Command:
    msg = commands_pb2.RelayCommand()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise CodecError(f"not a RelayCommand: {exc}") from None
    if not msg.command_id or not msg.site_id or not MAC_RE.match(msg.plug_mac):
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
    )


def encode_outcome(res: CommandOutcome) -> bytes:
    return commands_pb2.CommandResult(
        command_id=res.command_id,
        site_id=res.site_id,
        plug_mac=res.plug_mac,
        ok=res.ok,
        reason=res.reason,
        relay_on=bool(res.relay_on),
        relay_state_known=res.relay_on is not None,
        error=res.error,
        executed_at_ms=res.executed_at_ms,
        session_id=res.session_id,
    ).SerializeToString()


def decode_outcome(data: bytes) -> CommandOutcome:
    msg = commands_pb2.CommandResult()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise CodecError(f"not a CommandResult: {exc}") from None
    if not msg.site_id or not msg.reason:
        raise CodecError("command result lacks a site_id or reason")
    return CommandOutcome(
        command_id=msg.command_id,
        site_id=msg.site_id,
        plug_mac=msg.plug_mac,
        ok=msg.ok,
        reason=msg.reason,
        executed_at_ms=msg.executed_at_ms,
        relay_on=msg.relay_on if msg.relay_state_known else None,
        error=msg.error,
        session_id=msg.session_id,
    )


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
