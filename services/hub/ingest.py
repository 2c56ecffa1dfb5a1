"""Telemetry intake for the hub: shard check, verify, decode, and dedupe by ``(site_id, epoch, batch_seq)``.

Pure apart from the crypto: ``accept`` takes the message bytes and attributes and says what to do
with it. The caller acks ``duplicate`` and ``other_shard`` (counted), dead-letters the rejections with
the reason as an attribute, and feeds the accepted batch (or command outcome) to the plug machines.
Agents replay spooled batches and Pub/Sub redelivers; the :class:`SeqWindow` per site and agent
epoch makes both no-ops. The epoch is the agent instance (a random id made with its state_dir): a
replacement Pi numbers its batches from 1 again under a new epoch and is accepted at once, while
replays of either Pi's batches are still dropped. Only the ``MAX_EPOCHS_PER_SITE`` most recently seen
epochs of a site are remembered. It is part of the hub's checkpoint.

The agent stamps readings with the Pi's wall clock, which can step by hours (no RTC, a bad time source).
A plug's machine drops samples not newer than its last, so a step back would hide every later sample of
a session (and its energy, if the session ends before the clock catches up), and a step ahead has them
refused as from the future. So each window also keeps ``high_ts``, the newest reading time taken from
that agent instance. A new batch (never a replay: those are dropped above) whose oldest reading is more
than ``STEP_BACK_TOLERANCE_MS`` older than ``high_ts``, or whose newest is more than ``max_clock_skew_ms``
in the hub's future,
was stamped by a clock that stepped: its times are shifted together so its newest reading is the hub's
now (counted in ``rebased_batches``). Spacing within the batch is kept; energy is in the counters.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from chargectl.common import codec
from chargectl.common.errors import CodecError, SignatureError
from chargectl.common.keys import Keyring

__all__ = [
    "MAX_EPOCHS_PER_SITE",
    "STEP_BACK_TOLERANCE_MS",
    "Accepted",
    "Ingest",
    "IngestRefusal",
    "Rejected",
    "SeqWindow",
    "Skipped",
    "Verdict",
    "window_key",
]

MAX_EPOCHS_PER_SITE = 8
# An agent stamps each reading when its plug answers and batches them in that order: a new batch older
# than what it sent before by more than this was stamped by a clock that stepped back. Any step back
# costs: the machine drops the samples until the clock passes its last, and the next one then carries
# all their energy in one short gap, above the plug's physical bound (held for review, not billed).
STEP_BACK_TOLERANCE_MS = 5_000

log = logging.getLogger("chargectl.hub.ingest")


class IngestRefusal(StrEnum):
    """Why a telemetry-topic message is skipped (acked, counted) or dead-lettered (the ``reason``)."""

    DUPLICATE = "duplicate"  # skipped: already processed
    OTHER_SHARD = "other_shard"  # skipped: the attribute routes it to another hub
    BAD_SCHEMA = "bad_schema"
    UNVERIFIED = "unverified"  # no acceptable signature (SignatureError)
    MALFORMED = "malformed"
    REVOKED = "revoked"
    WRONG_SHARD = "wrong_shard"  # the signed site's Site.shard is another hub's


def window_key(site_id: str, epoch: int) -> str:
    """The dedupe window's key: the site alone for epoch 0 (agents before epochs), else site@epoch."""
    return site_id if epoch == 0 else f"{site_id}@{epoch:016x}"


class SeqWindow:
    """The batch sequence numbers seen from one site: everything ``<= low`` plus a sparse set above it.

    Agents number batches 1, 2, 3…; gaps (a spool that dropped its oldest batches) would keep the set
    growing, so it is bounded: past ``max_sparse`` entries the low mark moves up to the oldest entry,
    which treats a batch that never arrived in that window as seen — it was dropped at the source.
    """

    __slots__ = ("high_ts", "low", "max_sparse", "sparse")

    def __init__(
        self, low: int = 0, sparse: set[int] | None = None, max_sparse: int = 4096, high_ts: int = 0
    ) -> None:
        self.low = low
        self.sparse = sparse or set()
        self.max_sparse = max_sparse
        self.high_ts = high_ts  # the newest reading time accepted from this agent instance (0: none yet)

    def seen(self, seq: int) -> bool:
        return seq <= self.low or seq in self.sparse

    def add(self, seq: int) -> None:
        if self.seen(seq):
            return
        self.sparse.add(seq)
        while self.low + 1 in self.sparse:
            self.low += 1
            self.sparse.discard(self.low)
        while len(self.sparse) > self.max_sparse:
            smallest = min(self.sparse)
            self.sparse.discard(smallest)
            self.low = smallest
            while self.low + 1 in self.sparse:
                self.low += 1
                self.sparse.discard(self.low)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"low": self.low, "sparse": sorted(self.sparse)}
        if self.high_ts:
            out["high_ts"] = self.high_ts
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SeqWindow:
        return cls(
            int(data["low"]), {int(s) for s in data.get("sparse", [])}, high_ts=int(data.get("high_ts", 0))
        )


def _ts_range(batch: codec.BatchRuns) -> tuple[int, int] | None:
    """(oldest, newest) reading time of a batch; None without readings."""
    if batch.extent is not None:
        return batch.extent.min_ts_ms, batch.extent.max_ts_ms
    times = [ts for run in batch.runs.values() for ts in run.ts_ms]
    return (min(times), max(times)) if times else None


def _shifted(batch: codec.BatchRuns, shift_ms: int) -> codec.BatchRuns:
    """The batch with every reading time moved by ``shift_ms`` (new lists: the decoded ones are shared)."""
    runs = {}
    for mac, run in batch.runs.items():
        moved = dataclasses.replace(run)
        moved.ts_ms = [ts + shift_ms for ts in run.ts_ms]
        runs[mac] = moved
    extent = batch.extent
    if extent is not None:
        extent = dataclasses.replace(
            extent, min_ts_ms=extent.min_ts_ms + shift_ms, max_ts_ms=extent.max_ts_ms + shift_ms
        )
    return dataclasses.replace(batch, runs=runs, extent=extent)


@dataclass(frozen=True, slots=True)
class Accepted:
    site_id: str
    batch: codec.BatchRuns | None = None  # decoded into per-plug runs (no object per reading)
    outcome: codec.CommandOutcome | None = None


@dataclass(frozen=True, slots=True)
class Skipped:
    """Not ours to process, or already processed: ack and count."""

    reason: IngestRefusal  # DUPLICATE | OTHER_SHARD
    site_id: str = ""


@dataclass(frozen=True, slots=True)
class Rejected:
    """Dead-letter with ``reason`` (and ``detail`` for the operator)."""

    reason: str  # an IngestRefusal, or the registry's PlugRefusal.FOREIGN_PLUG
    detail: str
    site_id: str = ""


Verdict = Accepted | Skipped | Rejected


@dataclass
class Ingest:
    """Decides what to do with each telemetry-topic message for hub shard ``shard``."""

    keyring: Keyring
    shard: int | None = None
    revoked_sites: set[str] = field(default_factory=set)
    site_shards: dict[str, int] = field(default_factory=dict)  # Site.shard: which hub owns a site
    windows: dict[str, SeqWindow] = field(default_factory=dict)
    max_size: int = codec.DEFAULT_MAX_DECOMPRESSED
    max_clock_skew_ms: int = 120_000  # a batch stamped further off than this by a stepped clock is rebased
    rebased_batches: int = 0
    _rebase_logged: dict[str, int] = field(default_factory=dict)  # window key -> when last said (ms)

    def accept(self, data: bytes, attributes: Mapping[str, str], now_ms: int | None = None) -> Verdict:
        site_attr = attributes.get("site_id", "")
        if self.shard is not None and attributes.get("shard", "") != str(self.shard):
            return Skipped(IngestRefusal.OTHER_SHARD, site_attr)
        schema = attributes.get("schema", "")
        if site_attr in self.revoked_sites:
            return Rejected(IngestRefusal.REVOKED, f"site {site_attr} is revoked", site_attr)
        try:
            if schema == codec.SCHEMA_TELEMETRY:
                batch = codec.unpack_telemetry_runs(data, self.keyring, now_ms, self.max_size)
                if batch.site_id in self.revoked_sites:
                    return Rejected(IngestRefusal.REVOKED, f"site {batch.site_id} is revoked", batch.site_id)
                wrong = self._wrong_shard(batch.site_id)
                if wrong is not None:
                    return wrong
                key = window_key(batch.site_id, batch.epoch)
                window = self.windows.get(key)
                if window is not None and window.seen(batch.batch_seq):
                    return Skipped(IngestRefusal.DUPLICATE, batch.site_id)
                if now_ms is not None:
                    batch = self._rebase(batch, key, window, now_ms)
                return Accepted(batch.site_id, batch=batch)
            if schema == codec.SCHEMA_RESULT:
                outcome = codec.unpack_outcome(data, self.keyring, now_ms)
                wrong = self._wrong_shard(outcome.site_id)
                if wrong is not None:
                    return wrong
                return Accepted(outcome.site_id, outcome=outcome)
        except SignatureError as exc:
            return Rejected(IngestRefusal.UNVERIFIED, str(exc), site_attr)
        except CodecError as exc:
            return Rejected(IngestRefusal.MALFORMED, str(exc), site_attr)
        return Rejected(IngestRefusal.BAD_SCHEMA, f"unexpected schema {schema!r}", site_attr)

    def _rebase(
        self, batch: codec.BatchRuns, key: str, window: SeqWindow | None, now_ms: int
    ) -> codec.BatchRuns:
        """The batch on the hub's clock if the agent's clock stepped (see the module's docstring)."""
        span = _ts_range(batch)
        if span is None:
            return batch
        oldest, newest = span
        high = window.high_ts if window is not None else 0
        stepped_back = high > 0 and oldest < high - STEP_BACK_TOLERANCE_MS
        ahead = newest > now_ms + self.max_clock_skew_ms
        if not (stepped_back or ahead):
            return batch
        shift_ms = now_ms - newest
        if abs(shift_ms) <= STEP_BACK_TOLERANCE_MS:
            return batch  # the step is inside this batch, its newest readings already on time
        self.rebased_batches += 1
        last = self._rebase_logged.get(key)
        if last is None or now_ms - last >= 3_600_000:
            self._rebase_logged[key] = now_ms
            log.warning(
                "site %s: its clock is %.0f s off the hub's (readings %s what it sent before); "
                "its reading times are shifted onto the hub's clock",
                batch.site_id,
                -shift_ms / 1000,
                "older than" if stepped_back else "ahead of the hub and",
            )
        return _shifted(batch, shift_ms)

    def _wrong_shard(self, site_id: str) -> Rejected | None:
        """The signed site's ``Site.shard`` decides, not the unsigned ``shard`` attribute."""
        if self.shard is None:
            return None
        owner = self.site_shards.get(site_id)
        if owner is None or owner == self.shard:
            return None
        return Rejected(
            IngestRefusal.WRONG_SHARD, f"site {site_id} belongs to shard {owner}, not {self.shard}", site_id
        )

    def commit(self, verdict: Accepted) -> None:
        """Record an accepted batch as processed (call once its readings reached the machines)."""
        if verdict.batch is not None:
            key = window_key(verdict.site_id, verdict.batch.epoch)
            window = self.windows.pop(key, None) or SeqWindow()
            window.add(verdict.batch.batch_seq)
            span = _ts_range(verdict.batch)
            if span is not None and span[1] > window.high_ts:
                window.high_ts = span[1]
            self.windows[key] = window  # most recently used last: the eviction order below
            self._evict_epochs(verdict.site_id)

    def _evict_epochs(self, site_id: str) -> None:
        keys = [k for k in self.windows if k == site_id or k.startswith(site_id + "@")]
        for key in keys[: max(0, len(keys) - MAX_EPOCHS_PER_SITE)]:
            del self.windows[key]

    def to_dict(self) -> dict[str, Any]:
        return {site: w.to_dict() for site, w in self.windows.items()}

    def load(self, data: Mapping[str, Any]) -> None:
        self.windows = {site: SeqWindow.from_dict(w) for site, w in data.items()}
