"""The agent's durable state in its state directory: batch sequence, telemetry spool, executed commands.

Every write is fsynced (file, then directory) before it counts, so a power cut on the Pi loses at most
the write in progress and never leaves a half-written file behind a valid name.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from chargectl.common import files
from chargectl.common.errors import StoreError

__all__ = [
    "CommandJournal",
    "SequenceCounter",
    "Spool",
    "SpooledBatch",
    "load_epoch",
    "new_epoch",
    "quarantine",
    "store_epoch",
    "write_atomic",
]

log = logging.getLogger("chargectl.agent")


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` durably (see ``common.files``); failures are ``StoreError``."""
    try:
        files.write_atomic(path, data, mode)
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc


def quarantine(path: Path, why: str) -> Path | None:
    """Move a corrupt state file aside (``name.corrupt-N``) with a warning, so the agent can start."""
    for n in range(1, 1000):
        aside = path.with_name(f"{path.name}.corrupt-{n}")
        if not aside.exists():
            break
    try:
        path.rename(aside)
    except OSError as exc:
        log.warning("state file %s is corrupt (%s) and cannot be moved aside: %s", path, why, exc)
        return None
    log.warning("state file %s is corrupt (%s); moved it aside to %s", path, why, aside.name)
    return aside


def new_epoch() -> int:
    """A random non-zero 64-bit agent instance id (0 means "an agent before epochs" to the hub)."""
    return secrets.randbits(64) or 1


def load_epoch(path: Path) -> tuple[int, bool]:
    """The agent instance epoch kept at ``path``, made (and persisted) if missing or corrupt.

    Returns ``(epoch, made)``. A state directory keeps its epoch for life; a fresh one (a replacement
    Pi, a wiped card) gets a new one, so the hub accepts its ``batch_seq`` from 1 again at once.
    """
    try:
        text = path.read_bytes().decode("ascii").strip()
        epoch = int(text, 16)
        if len(text) != 16 or not 0 < epoch < 2**64:
            raise ValueError(text[:40])
        return epoch, False
    except FileNotFoundError:
        pass
    except (ValueError, UnicodeDecodeError) as exc:
        quarantine(path, f"not an epoch: {exc}")
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc
    epoch = new_epoch()
    store_epoch(path, epoch)
    return epoch, True


def store_epoch(path: Path, epoch: int) -> None:
    write_atomic(path, f"{epoch:016x}\n".encode(), 0o600)


class SequenceCounter:
    """The site's ``batch_seq``: monotonic, persisted before each number is handed out.

    A corrupt file is moved aside and counting restarts at 0 (``reset`` is then True: the caller must
    start a new epoch, or the hub would drop the restarted numbers as duplicates).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last = 0
        self.reset = False
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raw = b""
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc
        text = raw.decode("ascii", "replace").strip()
        if raw and (not text.isdigit() or len(text) > 19):
            quarantine(path, f"not a batch sequence number: {text[:40]!r}")
            self.reset = True
        elif text:
            self._last = int(text)

    @property
    def last(self) -> int:
        return self._last

    def advance_to(self, seq: int) -> None:
        """Never hand out ``seq`` or anything below it (a spooled batch found on disk, say)."""
        if seq > self._last:
            write_atomic(self.path, f"{seq}\n".encode())
            self._last = seq

    def next(self) -> int:
        seq = self._last + 1
        write_atomic(self.path, f"{seq}\n".encode())
        self._last = seq
        return seq

    def next_volatile(self) -> int:
        """The next number without persisting it (the disk refused ``next``); the caller must be
        numbering under an epoch that is never persisted, so a restart cannot reuse it."""
        self._last += 1
        return self._last


@dataclass(frozen=True)
class SpooledBatch:
    """One packed telemetry message waiting for the bus."""

    seq: int
    data: bytes = field(repr=False)
    attributes: Mapping[str, str]
    readings: int


_MAGIC = b"CCSPOOL1"
_HEADER = struct.Struct(">I")


class Spool:
    """Packed batches on disk, one file per ``batch_seq``, bounded in bytes (oldest dropped, counted)."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.dropped_batches = 0
        self.dropped_readings = 0
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for tmp in directory.glob(".*"):
                tmp.unlink(
                    missing_ok=True
                )  # an interrupted write: its batch was never acknowledged as spooled
            self._sizes = {
                int(p.stem): p.stat().st_size for p in directory.glob("*.batch") if p.stem.isdigit()
            }
        except OSError as exc:
            raise StoreError(f"cannot open spool {directory}: {exc.strerror or exc}") from exc

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:020d}.batch"

    def __len__(self) -> int:
        return len(self._sizes)

    @property
    def size_bytes(self) -> int:
        return sum(self._sizes.values())

    def seqs(self) -> list[int]:
        return sorted(self._sizes)

    def put(self, batch: SpooledBatch) -> None:
        header = json.dumps({"attributes": dict(batch.attributes), "readings": batch.readings}).encode()
        blob = _MAGIC + _HEADER.pack(len(header)) + header + batch.data
        write_atomic(self._path(batch.seq), blob, 0o600)
        self._sizes[batch.seq] = len(blob)
        self._trim(keep=batch.seq)

    def _trim(self, keep: int) -> None:
        while self.size_bytes > self.max_bytes and len(self._sizes) > 1:
            oldest = min(s for s in self._sizes if s != keep)
            readings = self._readings_of(oldest)
            self.remove(oldest)
            self.dropped_batches += 1
            self.dropped_readings += readings
            log.warning(
                "spool full (%d bytes max): dropped batch %d with %d readings; %d batches dropped so far",
                self.max_bytes,
                oldest,
                readings,
                self.dropped_batches,
            )

    def _readings_of(self, seq: int) -> int:
        try:
            return self.get(seq).readings
        except StoreError:
            return 0

    def get(self, seq: int) -> SpooledBatch:
        path = self._path(seq)
        try:
            blob = path.read_bytes()
        except OSError as exc:
            raise StoreError(f"cannot read spooled batch {path}: {exc.strerror or exc}") from exc
        if not blob.startswith(_MAGIC) or len(blob) < len(_MAGIC) + _HEADER.size:
            raise StoreError(f"spooled batch {path} is corrupt")
        (n,) = _HEADER.unpack_from(blob, len(_MAGIC))
        start = len(_MAGIC) + _HEADER.size
        try:
            header = json.loads(blob[start : start + n])
            attributes = {str(k): str(v) for k, v in header["attributes"].items()}
            readings = int(header["readings"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise StoreError(f"spooled batch {path} is corrupt") from None
        return SpooledBatch(seq, blob[start + n :], attributes, readings)

    def set_aside(self, seq: int, why: str) -> None:
        """Move an unreadable batch out of the spool (kept as ``NAME.corrupt-N``, with a warning)."""
        self._sizes.pop(seq, None)
        if quarantine(self._path(seq), why) is None:
            self._path(seq).unlink(missing_ok=True)

    def remove(self, seq: int) -> None:
        """Delete batch ``seq``; it is forgotten even if the disk refuses (a leftover file is replayed
        after a restart, and the hub drops it as a duplicate)."""
        self._sizes.pop(seq, None)
        try:
            self._path(seq).unlink(missing_ok=True)
            files.fsync_dir(self.directory)
        except OSError as exc:
            raise StoreError(f"cannot remove spooled batch {seq}: {exc.strerror or exc}") from exc


class CommandJournal:
    """Ids of commands already executed, kept durably until ``forget_after_ms`` has passed for each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._until: dict[str, int] = {}
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raw = b""
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            # Keep every line that still reads (each is a command that must not run twice), then
            # rewrite the journal from them below; the damaged original is kept aside.
            quarantine(path, f"invalid UTF-8 at byte {exc.start}")
            text = raw.decode("utf-8", "replace")
            text = "\n".join(line for line in text.split("\n") if "\ufffd" not in line)
            self._until = {}
            self._parse(text)
            self._rewrite()
            return
        self._parse(text)
        if text and not text.endswith("\n"):
            self._rewrite()

    def _parse(self, text: str) -> None:
        # Only newline-terminated lines count: a torn last line (power cut mid-append) belongs to a
        # command that was never executed, because execution waits for the fsync.
        for line in text.split("\n")[:-1]:
            parts = line.split()
            if len(parts) == 2 and parts[1].isascii() and parts[1].isdigit() and len(parts[1]) < 20:
                self._until[parts[0]] = max(self._until.get(parts[0], 0), int(parts[1]))

    def _rewrite(self) -> None:
        write_atomic(self.path, "".join(f"{c} {u}\n" for c, u in self._until.items()).encode(), 0o600)

    def __contains__(self, command_id: object) -> bool:
        return command_id in self._until

    def __len__(self) -> int:
        return len(self._until)

    def record(self, command_id: str, keep_until_ms: int) -> None:
        """Remember ``command_id`` (durably, before the command runs) until ``keep_until_ms``."""
        if any(c.isspace() for c in command_id):
            raise StoreError("command id contains whitespace")
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(f"{command_id} {keep_until_ms}\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise StoreError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        self._until[command_id] = keep_until_ms

    def prune(self, now_ms: int) -> int:
        """Forget ids whose time has passed and rewrite the journal; returns how many were dropped."""
        expired = [cid for cid, until in self._until.items() if until < now_ms]
        if not expired and self.path.exists():
            return 0
        for cid in expired:
            del self._until[cid]
        self._rewrite()
        return len(expired)
