"""The hub's checkpoint, incremental: a small head document (the telemetry sequence windows and the
session finishes not yet written), the machines in ``PARTS`` part documents by a hash of the MAC, and
a delta document with the plugs changed since their part was written.

A periodic checkpoint rewrites a rotating ``ROTATE_PARTS`` of the parts (so every plug's counters are
at most ``PARTS / ROTATE_PARTS`` checkpoints old) and the delta: every plug whose status, session or
site changed since its part was last written (``PartTracker``), which on load overrides its part. A
full checkpoint (shutdown, tests) rewrites every part and an empty delta. A plug state older than the
head is what restarting from an older checkpoint does for that plug, which the hub already survives:
energy comes from the counter delta at the next reading, finished and started sessions from the
store (``Hub._reconcile``). Parts and the delta are written before the head.

Version 1 (one blob with every plug) is still read.
"""

from __future__ import annotations

import contextlib
import gc
import json
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError

from chargectl.common import codec
from chargectl.common.errors import StoreError
from chargectl.services.hub import machine as m
from chargectl.services.hub.params import PlugParams

__all__ = [
    "PARTS",
    "ROTATE_PARTS",
    "Finish",
    "PartTracker",
    "Snapshot",
    "decode",
    "delta_name",
    "encode",
    "encode_head",
    "encode_part",
    "part_name",
    "part_of",
]

Finish = tuple[codec.ChargeSession, codec.LedgerEntry | None]
"""A finished session's COMPLETED document and its debit, written together."""

PARTS = 64  # part documents per hub: ~1,600 plugs each at 100k plugs
ROTATE_PARTS = 8  # clean parts rewritten by each periodic checkpoint: all of them every 8 checkpoints


def part_of(mac: str) -> int:
    return zlib.crc32(mac.encode()) % PARTS


def part_name(head: str, part: int) -> str:
    return f"{head}.p{part:02d}"


def delta_name(head: str) -> str:
    return f"{head}.delta"


class PartTracker:
    """Which plugs changed since their part was written (the delta), and which parts rotate in next."""

    def __init__(self) -> None:
        self.changed: set[str] = set()
        self.owed: set[int] = set()  # parts of a checkpoint that failed half way
        self._next = 0

    def touch(self, mac: str) -> None:
        self.changed.add(mac)

    def take(self) -> set[int]:
        """The parts the next periodic checkpoint rewrites."""
        out = self.owed | {(self._next + i) % PARTS for i in range(ROTATE_PARTS)}
        self._next = (self._next + ROTATE_PARTS) % PARTS
        self.owed = set()
        return out

    def written(self, parts: Iterable[int]) -> None:
        """``parts`` are on disk: their plugs leave the delta."""
        done = set(parts)
        self.changed = {mac for mac in self.changed if part_of(mac) not in done}

    def give_back(self, parts: Iterable[int]) -> None:
        """A checkpoint that failed half way: its parts are written next time."""
        self.owed.update(parts)


@dataclass
class Snapshot:
    saved_at_ms: int = 0
    plugs: dict[str, tuple[str, m.MachineState]] = field(default_factory=dict)  # MAC -> (site, state)
    ingest: dict[str, Any] = field(default_factory=dict)
    finishes: dict[str, Finish] = field(default_factory=dict)


def _pack(data: Mapping[str, Any]) -> bytes:
    # Level 3: half the time of level 6 for about a sixth more bytes (a part stays far under a chunk).
    return zlib.compress(json.dumps(data, separators=(",", ":")).encode(), 3)


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Encoding builds a few dicts per plug (tens of thousands per periodic checkpoint at 100k plugs),
    acyclic and freed by reference counting as soon as the document is packed. Collecting while they
    are alive would only promote them and start full collections over the hub's whole state; so the
    cycle collector waits for the encode (and runs as before the moment it is over)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _plugs(plugs: Mapping[str, tuple[str, m.MachineState]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mac, (site, state) in plugs.items():
        values = m.to_dict(state)
        # Not written: a plug's parameters come from the hub's configuration when it loads (``decode``
        # takes them), so the sixteen numbers per plug were a third of every part and never read.
        values.pop("params", None)
        out[mac] = {"site": site, "state": values}
    return out


def _finishes(finishes: Mapping[str, Finish]) -> dict[str, list[str]]:
    return {
        sid: [doc.SerializeToString().hex(), entry.SerializeToString().hex() if entry else ""]
        for sid, (doc, entry) in finishes.items()
    }


def encode(
    now_ms: int,
    plugs: Mapping[str, tuple[str, m.MachineState]],
    ingest: Mapping[str, Any],
    finishes: Mapping[str, Finish],
) -> bytes:
    """Version 1: everything in one blob (still read; the hub writes version 2)."""
    with _no_cycle_collection():
        return _pack(
            {
                "version": 1,
                "saved_at_ms": now_ms,
                "plugs": _plugs(plugs),
                "ingest": dict(ingest),
                "finishes": _finishes(finishes),
            }
        )


def encode_head(now_ms: int, ingest: Mapping[str, Any], finishes: Mapping[str, Finish]) -> bytes:
    return _pack(
        {
            "version": 2,
            "saved_at_ms": now_ms,
            "parts": PARTS,
            "ingest": dict(ingest),
            "finishes": _finishes(finishes),
        }
    )


def encode_part(now_ms: int, plugs: Mapping[str, tuple[str, m.MachineState]]) -> bytes:
    with _no_cycle_collection():
        return _pack({"saved_at_ms": now_ms, "plugs": _plugs(plugs)})


def decode(
    blob: bytes,
    params: Callable[[str], PlugParams],
    load_part: Callable[[int], bytes | None] | None = None,
    load_delta: Callable[[], bytes | None] | None = None,
) -> Snapshot:
    """The checkpoint whose head is ``blob``; ``load_part(k)`` reads part ``k`` (version 2), ``params``
    gives each plug's current parameters, ``load_delta()`` the delta. StoreError if unreadable (a missing part is skipped: its plugs
    start as new ones and their open sessions are resumed from the store)."""
    try:
        data = json.loads(zlib.decompress(blob))
        snap = Snapshot(saved_at_ms=int(data.get("saved_at_ms", 0)), ingest=data.get("ingest", {}))
        entries: dict[str, Any] = dict(data.get("plugs", {}))
        if int(data.get("version", 1)) >= 2:
            if load_part is None:
                raise StoreError("hub checkpoint has parts but no way to read them")
            for k in range(int(data["parts"])):
                part = load_part(k)
                if part is not None:
                    entries.update(json.loads(zlib.decompress(part)).get("plugs", {}))
            delta = load_delta() if load_delta is not None else None
            if delta is not None:  # newer than the parts: overrides them
                entries.update(json.loads(zlib.decompress(delta)).get("plugs", {}))
        sites: dict[str, str] = {}
        for mac, entry in entries.items():
            # One string object per MAC (the map's key is the state's mac) and per site, as in a hub
            # that learnt its plugs from traffic: 100k restored plugs need not hold 100k copies of each.
            state = dict(entry["state"])
            if state.get("mac") != mac:
                raise ValueError(f"the state filed under plug {mac} is of plug {state.get('mac')!r}")
            state["mac"] = mac
            site = sites.setdefault(entry["site"], entry["site"])
            snap.plugs[mac] = (site, m.from_dict(state, params(mac)))
        for sid, (doc_hex, entry_hex) in data.get("finishes", {}).items():
            doc = codec.ChargeSession.FromString(bytes.fromhex(doc_hex))
            entry = codec.LedgerEntry.FromString(bytes.fromhex(entry_hex)) if entry_hex else None
            snap.finishes[sid] = (doc, entry)
    except (zlib.error, ValueError, KeyError, TypeError, DecodeError) as exc:
        raise StoreError(f"hub checkpoint is unreadable: {exc}") from exc
    return snap
