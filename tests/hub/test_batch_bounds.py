"""The reading bounds decided once per batch (``intake.batch_in_bounds`` over the codec's ``RunsExtent``)
never let through a run that the per-run check refuses: hostile batches (a sample over the plug's
rating, stamped too old or too far ahead, out of order or repeated, negative counters, a missing
voltage) fall back to the per-run check, and the hub then refuses exactly those readings. A clean
batch is decided at once."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from chargectl.common import codec
from chargectl.common.clock import ManualClock
from chargectl.common.readings import Reading
from chargectl.services.adapters.memory_bus import MemoryBus
from chargectl.services.adapters.sqlite_store import SqliteStore
from chargectl.services.hub.intake import batch_in_bounds, run_in_bounds
from chargectl.services.hub.service import Hub, HubPorts
from chargectl.services.hub.settings import HubSettings

NOW = 1_767_225_600_000
AGE = 3_600_000
SKEW = 300_000
RATED = HubSettings().rated_floor_w
MACS = [f"AABBCCDD{i:04X}" for i in range(4)]


def _decode(readings: list[Reading]) -> codec.BatchRuns:
    return codec.decode_runs(codec.encode_batch(codec.Batch("site-a", 1, tuple(readings))))


_reading = st.builds(
    lambda ts, power, energy, volts, temp, errors, up: (ts, power, energy, volts, temp, errors, up),
    st.one_of(
        st.integers(min_value=NOW - AGE - 2, max_value=NOW + SKEW + 2),
        st.sampled_from([NOW - AGE, NOW - AGE - 1, NOW + SKEW, NOW + SKEW + 1]),
    ),
    st.one_of(
        st.integers(min_value=0, max_value=40_000).map(lambda dw: dw / 10),
        st.sampled_from([RATED * 1.1, RATED * 1.1 + 0.1, 0.0]),
    ),
    st.integers(min_value=0, max_value=10**9),
    st.one_of(st.none(), st.integers(min_value=-50, max_value=2600).map(lambda dv: dv / 10)),
    st.one_of(st.none(), st.integers(min_value=-300, max_value=900).map(lambda dc: dc / 10)),
    st.sampled_from([0, 0, 0, 4]),
    st.one_of(st.none(), st.integers(min_value=0, max_value=10**7)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(MACS), _reading), min_size=1, max_size=24), st.booleans())
def test_a_batch_passed_at_once_is_one_whose_every_run_passes(
    rows: list[tuple[str, tuple]],  # type: ignore[type-arg]
    in_order: bool,
) -> None:
    if in_order:  # most real batches: every plug's samples in time order
        rows = sorted(rows, key=lambda row: row[1][0])
    readings = [
        Reading(mac, ts, p, e, True, v, 10.0 if v is not None else None, t, err, up)
        for mac, (ts, p, e, v, t, err, up) in rows
    ]
    batch = _decode(readings)
    every_run = all(run_in_bounds(run, NOW, AGE, SKEW, RATED) for run in batch.runs.values())
    if batch_in_bounds(batch.extent, NOW, AGE, SKEW, RATED):
        assert every_run
    # A plug rated higher than the floor is bounded by the floor: never more lenient than its rating.
    if batch_in_bounds(batch.extent, NOW, AGE, SKEW, RATED / 2):
        assert all(run_in_bounds(run, NOW, AGE, SKEW, RATED / 2) for run in batch.runs.values())


def _clean_batch() -> list[Reading]:
    return [
        Reading(
            mac, NOW - 30_000 + 5_000 * k, 2000.0 + k, 10**6 + 700 * k, True, 230.1, 8.7, 31.5, 0, 100 + k
        )
        for mac in MACS
        for k in range(6)
    ]


def test_a_clean_batch_is_bounded_at_once() -> None:
    batch = _decode(_clean_batch())
    assert batch.extent is not None and batch.extent.ordered and batch.extent.clean
    assert batch_in_bounds(batch.extent, NOW, AGE, SKEW, RATED)


def test_each_hostile_sample_sends_the_batch_to_the_per_run_check() -> None:
    def one_bad(**change: object) -> bool:
        rows = _clean_batch()
        r = rows[9]  # the second plug's fourth sample
        rows[9] = Reading(**{**{f: getattr(r, f) for f in Reading.__dataclass_fields__}, **change})  # type: ignore[arg-type]
        return batch_in_bounds(_decode(rows).extent, NOW, AGE, SKEW, RATED)

    assert not one_bad(power_w=RATED * 1.1 + 0.1)  # over the rating + 10 %
    assert not one_bad(ts_ms=NOW - AGE - 1)  # older than any spool replay
    assert not one_bad(ts_ms=NOW + SKEW + 1)  # from the future
    assert not one_bad(ts_ms=NOW - 30_000 + 5_000 * 2)  # the same time as the sample before it
    assert not one_bad(voltage_v=None)  # some samples without a voltage: each run's own rules
    assert not one_bad(voltage_v=-1.0)
    assert one_bad(power_w=RATED * 1.1)  # the edge itself is within bounds, as per run
    # A batch from the per-plug layout of earlier agents has no extent: bounded run by run.
    assert not batch_in_bounds(None, NOW, AGE, SKEW, RATED)


def test_the_floor_is_the_lowest_rating_of_any_configured_class() -> None:
    s = HubSettings(plug_classes={"ebike": {"rated_power_w": 1000.0}}, plugs={"AABBCCDD0001": "ebike"})
    assert s.rated_floor_w == 1000.0
    assert HubSettings().rated_floor_w == HubSettings().params("AABBCCDD0009").rated_power_w


def test_the_hub_refuses_only_the_hostile_reading_of_a_batch_bounded_run_by_run() -> None:
    # End to end through Hub.process_batch: one plug's sample over its rating costs that reading only.
    class Sink:
        def __init__(self) -> None:
            self.points = 0

        def add_run(self, site_id: str, run: codec.PlugRun, state: str) -> None:
            self.points += len(run)

        def add_readings(self, site_id: str, readings: object, state: str) -> None:
            self.points += len(readings)  # type: ignore[arg-type]

    sink = Sink()
    hub = Hub(
        HubSettings(max_new_plugs_per_batch=10),
        HubPorts(MemoryBus(), SqliteStore(":memory:"), sink, lambda s, n: None),  # type: ignore[arg-type,return-value]
        ManualClock(NOW / 1000),
    )
    rows = _clean_batch()
    r = rows[9]
    rows[9] = Reading(r.mac, r.ts_ms, RATED * 2, r.energy_mwh, True, 230.1, 8.7, 31.5, 0, r.uptime_s)
    hub.process_batch(_decode(rows))
    assert sink.points == len(rows) - 1
    assert hub.metrics.value("readings_refused_total", reason="over_power") == 1
    assert hub.plugs[MACS[1]].state.counter_mwh == rows[11].energy_mwh  # the plug's other samples counted
