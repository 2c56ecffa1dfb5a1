"""The reading bounds' fast path refuses exactly what the rule-by-rule check refuses (hostile values:
NaN, infinities, negatives, bools, ints where floats go, beyond int64, stamps at the age/skew edges)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from chargectl.common.readings import Reading
from chargectl.services.hub.intake import INT64_MAX, ReadingRefusal, check_reading, check_reading_rules

NOW = 1_767_225_600_000
AGE = 3_600_000
SKEW = 300_000
RATED = 3680.0

_ints = st.one_of(
    st.integers(min_value=0, max_value=10**7),
    st.sampled_from([-1, 0, INT64_MAX, INT64_MAX + 1, True, False]),
    st.floats(allow_nan=True),
)
_floats = st.one_of(
    st.floats(min_value=0.0, max_value=RATED * 1.2),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 5, -1, True, RATED * 1.1, math.nextafter(RATED * 1.1, math.inf), -0.0]),
)
_ts = st.one_of(
    st.integers(min_value=NOW - AGE - 2, max_value=NOW + SKEW + 2),
    st.sampled_from([NOW - AGE, NOW - AGE - 1, NOW + SKEW, NOW + SKEW + 1, -5, True, float(NOW)]),
)


@settings(max_examples=1500, deadline=None)
@given(
    _ts,
    _floats,
    _ints,
    _ints,
    st.one_of(st.none(), _ints),
    st.one_of(st.none(), _floats),
    st.one_of(st.none(), _floats),
    st.one_of(st.none(), _floats, st.floats(min_value=-60.0, max_value=-0.1)),
)
def test_fast_path_agrees_with_the_rules(
    ts: object,
    power: object,
    energy: object,
    errors: object,
    uptime: object,
    volts: object,
    amps: object,
    temp: object,
) -> None:
    r = Reading("AABBCCDDEEFF", ts, power, energy, False, volts, amps, temp, errors, uptime)  # type: ignore[arg-type]
    assert check_reading(r, NOW, AGE, SKEW, RATED) == check_reading_rules(r, NOW, AGE, SKEW, RATED)


def test_the_edges() -> None:
    ok = Reading("AABBCCDDEEFF", NOW, 100.0, 5, True, 230.0, 0.4, -3.5, 0, 100)
    assert check_reading(ok, NOW, AGE, SKEW, RATED) is None
    nan = Reading("AABBCCDDEEFF", NOW, math.nan, 5, True)
    assert check_reading(nan, NOW, AGE, SKEW, RATED) is ReadingRefusal.NOT_FINITE
    over = Reading("AABBCCDDEEFF", NOW, RATED * 1.1 + 0.1, 5, True)
    assert check_reading(over, NOW, AGE, SKEW, RATED) is ReadingRefusal.OVER_POWER
    late = Reading("AABBCCDDEEFF", NOW - AGE - 1, 1.0, 5, True)
    assert check_reading(late, NOW, AGE, SKEW, RATED) is ReadingRefusal.TOO_OLD
