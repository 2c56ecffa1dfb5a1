"""Open the backends the root config selects: ``backend = "local"`` (SQLite files under the state dir)
or ``"gcp"`` (Firestore, InfluxDB). Every command that touches the store goes through here, so the hub,
payments, the provisioner and the operator commands all see the same data."""

from __future__ import annotations

from pathlib import Path

from chargectl.common.config import Config
from chargectl.services.adapters.store import Store
from chargectl.services.adapters.timeseries import TimeSeries

__all__ = ["open_store", "open_timeseries", "store_path", "timeseries_path"]


def store_path(config: Config) -> Path:
    """The embedded store's SQLite file."""
    return config.state_dir / "chargectl.db"


def timeseries_path(config: Config) -> Path:
    return config.state_dir / "timeseries.db"


def open_store(config: Config) -> Store:
    if config.backend == "gcp":
        from chargectl.services.adapters.firestore_store import FirestoreStore

        return FirestoreStore(config.project)
    from chargectl.services.adapters.sqlite_store import SqliteStore

    return SqliteStore(store_path(config))


def open_timeseries(config: Config) -> TimeSeries:
    if config.backend == "gcp":
        from chargectl.services.adapters.influx_sink import InfluxSettings, InfluxSink

        # Points not yet written survive a stop or crash while InfluxDB is down (bounded on-disk queue).
        return InfluxSink(
            config.section("influx", InfluxSettings), spool_dir=config.state_dir / "influx-spool"
        )
    from chargectl.services.adapters.sqlite_timeseries import SqliteTimeSeries

    return SqliteTimeSeries(timeseries_path(config))
