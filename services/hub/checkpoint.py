"""The hub's checkpoint: every machine (with its plug's site), the telemetry sequence windows and the
session finishes not yet written, as one compressed JSON blob in the store (one per shard)."""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError

from chargectl.common import codec
from chargectl.common.errors import StoreError
from chargectl.services.hub import machine as m
from chargectl.services.hub.params import PlugParams

__all__ = ["Finish", "Snapshot", "decode", "encode"]

Finish = tuple[codec.ChargeSession, codec.LedgerEntry | None]
"""A finished session's COMPLETED document and its debit, written together."""


@dataclass
class Snapshot:
    saved_at_ms: int = 0
    plugs: dict[str, tuple[str, m.MachineState]] = field(default_factory=dict)  # MAC -> (site, state)
    ingest: dict[str, Any] = field(default_factory=dict)
    finishes: dict[str, Finish] = field(default_factory=dict)


def encode(
    now_ms: int,
    plugs: Mapping[str, tuple[str, m.MachineState]],
    ingest: Mapping[str, Any],
    finishes: Mapping[str, Finish],
) -> bytes:
    data = {
        "version": 1,
        "saved_at_ms": now_ms,
        "plugs": {mac: {"site": site, "state": m.to_dict(state)} for mac, (site, state) in plugs.items()},
        "ingest": dict(ingest),
        "finishes": {
            sid: [doc.SerializeToString().hex(), entry.SerializeToString().hex() if entry else ""]
            for sid, (doc, entry) in finishes.items()
        },
    }
    return zlib.compress(json.dumps(data, separators=(",", ":")).encode(), 6)


def decode(blob: bytes, params: Callable[[str], PlugParams]) -> Snapshot:
    """The checkpoint in ``blob``; ``params`` gives each plug's current parameters. StoreError if unreadable."""
    try:
        data = json.loads(zlib.decompress(blob))
        snap = Snapshot(saved_at_ms=int(data.get("saved_at_ms", 0)), ingest=data.get("ingest", {}))
        for mac, entry in data.get("plugs", {}).items():
            snap.plugs[mac] = (entry["site"], m.from_dict(entry["state"], params(mac)))
        for sid, (doc_hex, entry_hex) in data.get("finishes", {}).items():
            doc = codec.ChargeSession.FromString(bytes.fromhex(doc_hex))
            entry = codec.LedgerEntry.FromString(bytes.fromhex(entry_hex)) if entry_hex else None
            snap.finishes[sid] = (doc, entry)
    except (zlib.error, ValueError, KeyError, TypeError, DecodeError) as exc:
        raise StoreError(f"hub checkpoint is unreadable: {exc}") from exc
    return snap
