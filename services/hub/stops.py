"""The hub's local stop journal: which sessions it has stopped, on its own disk, before the store knows.

When the machine ends a session it commands the relay off and writes the stop reason into the session
document, so a hub restarted from an older checkpoint closes the session instead of resuming it with
the relay on. With the store down at that moment, the note waits; a hub killed then would restart,
find the session ACTIVE with no stop reason once the store is back, and switch the relay on for
whoever plugs in next, billed to the driver who left. The journal closes that window: the stop is
appended to a local file first (one ``write`` to an append-only file, so it survives the process being
killed; the tick ``fsync``s it, so it survives a power cut within a second), and a restart treats a
journalled session as stopped. An entry is dropped once the session's finish is written.

A journal that cannot be written (full or failing disk) never stops the hub: the stop goes on, the
note is still written to the store, and the failure is counted and logged once per kind of error.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

__all__ = ["StopJournal", "stop_journal_path"]

log = logging.getLogger("chargectl.hub.stops")


def stop_journal_path(state_dir: Path, shard: int) -> Path:
    """Where a hub of ``shard`` keeps its stop journal under the configured ``state_dir``."""
    return state_dir / f"hub-{shard}-stops.log"


class StopJournal:
    """``session id → stop reason`` of the stops whose finish is not written yet, kept in ``path``
    (one ``<session id>\\t<reason>`` line per stop). Pure bookkeeping plus small, bounded file I/O."""

    COMPACT_AFTER = 256  # dropped lines before the file is rewritten with the live ones only

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stops: dict[str, str] = {}
        self.errors = 0  # appends or syncs the disk refused
        self._dead = 0  # lines in the file for entries already dropped
        self._dirty = False  # appended since the last fsync
        self._fd: int | None = None
        self._logged: set[str] = set()
        self._torn = False  # the file ends mid-line (a kill mid-append): the next append starts a new one
        self._load()

    def _load(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return
        except OSError as exc:
            self._failed("read", exc)
            return
        self._torn = bool(text) and not text.endswith("\n")
        for line in text.splitlines():
            sid, tab, reason = line.partition("\t")
            if not tab or not sid:  # a line torn by a crash mid-write, or garbage: not a stop
                self._dead += 1
                continue
            if reason:
                self.stops[sid] = reason
            else:  # "<sid>\t" with no reason: a dropped entry
                self.stops.pop(sid, None)
                self._dead += 2

    def reason(self, session_id: str) -> str:
        """The journalled stop reason of ``session_id``, or ``""``."""
        return self.stops.get(session_id, "")

    def record(self, session_id: str, reason: str) -> bool:
        """Journal a stop (idempotent); False if the disk refused it (counted and logged)."""
        if not session_id or not reason or self.stops.get(session_id) == reason:
            return True
        clean = reason.replace("\t", " ").replace("\n", " ")
        if self._append(f"{session_id}\t{clean}\n"):
            self.stops[session_id] = clean
            return True
        return False

    def done(self, session_id: str) -> None:
        """The session's finish is written: forget it (a tombstone line, compacted later)."""
        if self.stops.pop(session_id, None) is None:
            return
        if self._append(f"{session_id}\t\n"):
            self._dead += 2
        if self._dead >= self.COMPACT_AFTER and self._dead > 2 * len(self.stops):
            self._compact()

    def keep_only(self, session_ids: set[str]) -> None:
        """Drop entries of sessions no longer live or pending (e.g. a finish written just before a kill)."""
        for sid in [s for s in self.stops if s not in session_ids]:
            self.done(sid)

    def sync(self) -> None:
        """fsync what was appended since the last call (the tick calls this)."""
        if not self._dirty or self._fd is None:
            return
        try:
            os.fsync(self._fd)
            self._dirty = False
        except OSError as exc:
            self._failed("sync", exc)

    def close(self) -> None:
        self.sync()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _append(self, line: str) -> bool:
        data = ("\n" + line if self._torn else line).encode("utf-8")
        try:
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            if os.write(self._fd, data) != len(data):
                raise OSError("short write")
        except OSError as exc:
            self._failed("write", exc)
            return False
        self._torn = False
        self._dirty = True
        return True

    def _compact(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        body = "".join(f"{sid}\t{reason}\n" for sid, reason in self.stops.items()).encode("utf-8")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, body)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as exc:
            self._failed("compact", exc)
            return
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None  # reopened on the next append, on the new file
        self._dead = 0
        self._dirty = False

    def _failed(self, what: str, exc: OSError) -> None:
        self.errors += 1
        kind = f"{what}:{type(exc).__name__}:{getattr(exc, 'errno', None)}"
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning("stop journal %s: %s failed (%s); stops still go to the store", self.path, what, exc)
