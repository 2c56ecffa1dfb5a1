"""Per-plug-class parameters: defaults from the reference, hysteresis enforced, config errors name the key."""

from __future__ import annotations

import pytest

from chargectl.common.config import build
from chargectl.common.errors import ConfigError
from chargectl.services.hub.params import DEFAULTS, PLUG_CLASSES, PlugParams, load_plug_classes, params_for


def test_every_class_has_defaults_with_hysteresis() -> None:
    assert set(DEFAULTS) == set(PLUG_CLASSES) == {"ev", "ebike", "scooter", "generic"}
    for params in DEFAULTS.values():
        assert params.start_w > params.stop_w
        assert params.stale_after_s < params.offline_after_s


def test_defaults_follow_the_reference() -> None:
    # Common practice: stop 15 W generic (evcc standbypower), complete 10 min EV / 5 min e-bike,
    # relay confirm 60 s, stale 90 s, offline 5 min, no-load 5 min.
    generic = DEFAULTS["generic"]
    assert (generic.stop_w, generic.start_w) == (15.0, 35.0)
    assert DEFAULTS["ev"].complete_after_s == 600.0
    assert DEFAULTS["ebike"].complete_after_s == 300.0
    assert generic.relay_confirm_s == 60.0
    assert generic.stale_after_s == 90.0
    assert generic.offline_after_s == 300.0
    assert generic.no_load_timeout_s == 300.0
    assert generic.keepalive_s == generic.auto_off_s / 3


def test_usable_with_config_build() -> None:
    assert build(PlugParams, {}) == PlugParams()
    assert build(PlugParams, {"stop_w": 5, "start_w": 40}).stop_w == 5.0


def test_start_must_exceed_stop() -> None:
    with pytest.raises(ConfigError, match="start_w"):
        build(PlugParams, {"start_w": 15, "stop_w": 15}, prefix="hub.plug_classes.ev")
    with pytest.raises(ConfigError, match="start_w"):
        params_for("ev", {"stop_w": 40})


def test_overrides_keep_class_defaults() -> None:
    ebike = params_for("ebike", {"stop_w": 5})
    assert ebike.stop_w == 5.0
    assert ebike.complete_after_s == DEFAULTS["ebike"].complete_after_s


def test_unknown_key_and_class_are_named() -> None:
    with pytest.raises(ConfigError, match="'stop_watts'"):
        params_for("ev", {"stop_watts": 5})
    with pytest.raises(ConfigError, match="'tractor'"):
        params_for("tractor")
    with pytest.raises(ConfigError, match="'tractor'"):
        load_plug_classes({"tractor": {}})


def test_load_plug_classes_names_bad_values() -> None:
    classes = load_plug_classes({"scooter": {"complete_after_s": 120}})
    assert classes["scooter"].complete_after_s == 120.0
    assert classes["ev"] == DEFAULTS["ev"]
    with pytest.raises(ConfigError, match=r"hub\.plug_classes\.ebike\.stop_w"):
        load_plug_classes({"ebike": {"stop_w": "lots"}})
    with pytest.raises(ConfigError, match="negative"):
        load_plug_classes({"ebike": {"relay_confirm_s": -1}})
