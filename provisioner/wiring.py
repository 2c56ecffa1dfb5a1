"""Build a :class:`Provisioner` from the root config: embedded (SQLite, key files, in-process bus) or
cloud (Firestore, Secret Manager, Pub/Sub; the emulators via their ``*_EMULATOR_HOST`` variables and
``[secrets] endpoint`` for a local Secret Manager)."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

from chargectl.common.config import Config
from chargectl.common.errors import ConfigError, StoreError
from chargectl.provisioner.site import Provisioner
from chargectl.services.adapters.secrets import secrets_from_config
from chargectl.services.adapters.sqlite_store import SqliteStore
from chargectl.services.adapters.store import Store
from chargectl.services.wiring import open_store, store_path

__all__ = ["ProvisionSettings", "open_provisioner"]


@dataclass(frozen=True)
class ProvisionSettings:
    """``[provision]``: rotation grace period, default currency and tariff (``key=value,…``)."""

    grace_s: float = 86_400.0
    currency: str = "gbp"
    tariff: str = ""

    def __post_init__(self) -> None:
        if self.grace_s < 0:
            raise ConfigError(f"provision.grace_s must be >= 0, got {self.grace_s}")


def snapshot_store(path: Path) -> Store:
    """A private in-memory copy of the embedded store at ``path`` (empty if there is none).

    For dry runs: opening the file itself would create it (and its ``-wal``/``-shm`` files, even
    read-only), so the database and its write-ahead log are copied aside and read from there.
    """
    store = SqliteStore(":memory:")
    if not path.exists():
        return store
    with tempfile.TemporaryDirectory(prefix="chargectl-dry-run-") as tmp:
        copy = Path(tmp) / path.name
        for suffix in ("", "-wal"):
            src = path.with_name(path.name + suffix)
            if src.exists():
                shutil.copyfile(src, copy.with_name(copy.name + suffix))
        try:
            source = sqlite3.connect(str(copy))
            try:
                source.backup(store._db)
            finally:
                source.close()
        except sqlite3.Error as exc:
            store.close()
            raise StoreError(f"cannot read store {path}: {exc}") from exc
    return store


def open_provisioner(config: Config, dry_run: bool = False) -> Provisioner:
    """The provisioner over the backends ``config`` selects; ``dry_run``: one that cannot write the
    embedded store (it plans against a copy). Planning never writes the other backends."""
    bus = None
    if config.backend == "gcp":
        from chargectl.services.adapters.pubsub_admin import PubSubAdmin

        bus = PubSubAdmin(config.project)
    store = snapshot_store(store_path(config)) if dry_run and config.backend != "gcp" else open_store(config)
    return Provisioner(store, secrets_from_config(config), bus, config.project, config.backend)
