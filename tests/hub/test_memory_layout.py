"""What keeps a plug's hub state small (README "Performance", memory): shared objects, not fewer rules.

The hub keeps 100k machine states; each int, string or slot it need not hold per plug is memory it
does not pay for. These tests pin the sharing, and that the state machine's money and relay rules are
the same with it: a restored or folded state bills and renews the plug's flip-back timer exactly as
before.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import sys
import zlib
from decimal import Decimal
from pathlib import Path

import pytest

from chargectl.common.errors import StoreError
from chargectl.common.readings import Reading
from chargectl.services.adapters.sqlite_store import SqliteStore
from chargectl.services.hub import checkpoint as ckpt
from chargectl.services.hub.billing import Tariff
from chargectl.services.hub.machine import (
    FIELDS,
    SESSION_FIELDS,
    MachineState,
    Readings,
    SendRelay,
    Session,
    SessionFinished,
    StartRequest,
    Status,
    StopReason,
    StopRequest,
    Tick,
    from_dict,
    new_state,
    step,
    to_dict,
)
from chargectl.services.hub.params import DEFAULTS
from chargectl.services.hub.registry import SAMPLES, HubPlug, PlugRefusal, PlugRegistry

P = DEFAULTS["generic"]  # auto_off_s 300: "on" renewed every 100 s
T0 = 1_700_000_000.0
TARIFF = Tariff(
    tariff_id="t1", price_per_kwh_minor=Decimal(30), session_fee_minor=50, min_start_balance_minor=100
)


def _reading(mac: str, t: float, power: float, mwh: int, relay: bool) -> Readings:
    return Readings((Reading(mac, round(t * 1000), power, mwh, relay, uptime_s=int(t - T0) + 1000),))


def _online(mac: str, t: float) -> MachineState:
    # As the hub does: a plug it first hears of in a batch is created and stepped at the batch's time.
    state, _ = step(new_state(mac, P, t), _reading(mac, t, 0.0, 5_000_000, False), t)
    assert state.status is Status.AVAILABLE
    return state


def test_plugs_stepped_at_one_hub_time_share_its_milliseconds() -> None:
    # A site's batch steps its plugs at one `now`: they hold one int for when they came online.
    t = T0 + 12.3456
    a, b = _online("AABBCCDDEE01", t), _online("AABBCCDDEE02", t)
    assert a.since_ms == 1_700_000_012_346  # by hand: 12.3456 s rounds to 12,346 ms
    assert a.since_ms is b.since_ms
    c = _online("AABBCCDDEE03", t + 0.001)  # another time, its own value
    assert c.since_ms == 1_700_000_012_347


def _charging(mac: str) -> tuple[MachineState, float, int]:
    """A plug drawing 2 kW since T0 + 10 with the relay on (session s1, balance 10,000)."""
    state = _online(mac, T0 + 5)
    state, fx = step(state, StartRequest("s1", "u1", TARIFF, 10_000, request_id="r1"), T0 + 10)
    (on,) = [e for e in fx if isinstance(e, SendRelay)]
    assert on.on and on.auto_off_s == 300
    mwh = 5_000_000
    t = T0 + 10
    for _ in range(4):  # 40 s of 2 kW: confirmed load
        t += 10
        mwh += 5_556  # 2000 W x 10 s = 5.556 Wh
        state, _ = step(state, _reading(mac, t, 2000.0, mwh, True), t)
    assert state.status is Status.CHARGING
    return state, t, mwh


@pytest.mark.parametrize(("after_s", "fires"), [(99.999, False), (100.0, True)])
def test_a_checkpoint_with_the_old_on_sent_slot_renews_the_flip_back_timer_on_time(
    after_s: float, fires: bool
) -> None:
    # The last "on" is the last send of the command in force; a checkpoint written while it had a slot
    # of its own still loads, and "on" is re-sent 100 s (auto_off_s / 3) after the last one, not later:
    # later and the plug's own timer would cut a paying user's charge.
    state, t, mwh = _charging("AABBCCDDEE04")
    old = to_dict(state)
    assert "on_sent_ms" not in old
    old["on_sent_ms"] = old["cmd_sent_ms"]
    restored = from_dict(json.loads(json.dumps(old)), P)
    assert to_dict(restored) == to_dict(state)
    sent_s = state.cmd_sent_ms / 1000
    assert sent_s == T0 + 10  # the start's "on"; readings never re-send it
    new, fx = step(restored, Tick(), sent_s + after_s)
    keepalives = [e for e in fx if isinstance(e, SendRelay)]
    assert bool(keepalives) is fires
    if fires:
        (k,) = keepalives
        assert (k.on, k.auto_off_s, k.reason, k.session_id) == (True, 300, "keepalive", "s1")
        assert new.cmd_sent_ms == round((sent_s + after_s) * 1000)
    # The money is untouched by the restore: the user stops, the relay goes off, the bill is the meter's.
    stop_t = t + 10
    new, fx = step(new, StopRequest(user_id="u1"), stop_t)
    assert [e.on for e in fx if isinstance(e, SendRelay)] == [False]
    new, fx = step(new, _reading("AABBCCDDEE04", stop_t + 5, 0.0, mwh + 100, False), stop_t + 5)
    (done,) = [e.record for e in fx if isinstance(e, SessionFinished)]
    assert done.energy_mwh == mwh + 100 - 5_000_000


def test_a_restored_checkpoint_shares_each_mac_and_site_string() -> None:
    states = {mac: _online(mac, T0 + 5) for mac in ("AABBCCDDEE05", "AABBCCDDEE06", "AABBCCDDEE07")}
    plugs = {mac: ("site-a" if mac[-1] != "7" else "site-b", s) for mac, s in states.items()}
    snap = ckpt.decode(ckpt.encode_part(1, plugs), lambda mac: P)
    assert set(snap.plugs) == set(plugs)
    for mac, (_, state) in snap.plugs.items():
        key = next(k for k in snap.plugs if k == mac)
        assert state.mac is key  # one string for the map and the machine
        assert to_dict(state) == to_dict(states[mac])
    sites = [site for site, _ in snap.plugs.values()]
    assert sorted(sites) == ["site-a", "site-a", "site-b"]
    assert sites[0] is sites[1]
    reasons = [state.reason for _, state in snap.plugs.values()]
    assert reasons[0] is reasons[1] is reasons[2]


def test_a_state_filed_under_another_plug_is_refused_not_given_that_plugs_session() -> None:
    # A damaged (or hand-edited) checkpoint files plug A's state, with its open session, under plug B.
    # Loading it would bill A's energy to B's meter: the checkpoint is refused like an unreadable one.
    a, _, _ = _charging("AABBCCDDEE08")
    b = _online("AABBCCDDEE09", T0 + 5)
    data = json.loads(zlib.decompress(ckpt.encode_part(1, {"AABBCCDDEE09": ("site-a", b)})))
    data["plugs"]["AABBCCDDEE09"]["state"] = to_dict(a)
    with pytest.raises(StoreError, match="AABBCCDDEE08"):
        ckpt.decode(zlib.compress(json.dumps(data).encode()), lambda mac: P)


def test_the_layout_has_no_slot_the_rules_do_not_need() -> None:
    # A guard for the figure in README "Performance": each slot is 8 B x 100k plugs. Adding one is fine
    # when a rule needs it; update this list and the memory figure together.
    assert len(FIELDS) == 25
    assert "on_sent_ms" not in FIELDS
    assert dataclasses.fields(MachineState)[0].name == "mac"
    # The hub's entry is the int of its row: no slot at all (every machine value in the row's columns
    # and lists, or, if rare, in a map by row), no int object for the row (the entry is it): 44 B with
    # its headers (a 4-slot entry and its row's int were 64 + 32 B before, 144 + 32 B before that).
    slots = [name for cls in HubPlug.__mro__ for name in getattr(cls, "__slots__", ())]
    assert slots == [] and HubPlug.__mro__[1:] == (int, object)
    assert MachineState not in HubPlug.__mro__
    plug = HubPlug(new_state("AABBCCDDEE01", P, T0), "site-a")
    assert int(plug) == plug.row and SAMPLES.macs[plug.row] == "AABBCCDDEE01" == plug.mac
    assert sys.getsizeof(plug) == 16 + 24 + 4  # GC header, int header, one 30-bit digit


def _own_copy(text: str) -> str:
    return "".join(list(text))  # equal, but another object


def test_re_read_bindings_key_on_the_hubs_own_mac_strings(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "hub.db")
    try:
        store.bind_plug("AABBCCDDEE10", "site-a", 1)
        store.bind_plug("AABBCCDDEE11", "site-a", 1)
        store.bind_plug("AABBCCDDEE12", "site-b", 1)
        plugs: dict[str, HubPlug] = {}  # the hub's plug map
        reg = PlugRegistry(store, max_new_per_batch=10, max_per_site=10, plugs=plugs)
        assert reg.refresh() == {}
        for mac in ("AABBCCDDEE10", "AABBCCDDEE11"):
            own = _own_copy(mac)
            plugs[own] = HubPlug(new_state(own, P, T0), "site-a")
            reg.entered(plugs[own])
        # An operator moves a plug meanwhile: the move is reported as before, and nothing else is.
        store.bind_plug("AABBCCDDEE11", "site-b", 2, replace=True)
        assert reg.refresh() == {"AABBCCDDEE11": "site-b"}
        assert reg.bindings == {"AABBCCDDEE10": "site-a", "AABBCCDDEE11": "site-b", "AABBCCDDEE12": "site-b"}
        keys = {k: k for k in reg._away}
        assert set(keys) == {"AABBCCDDEE11", "AABBCCDDEE12"}  # site-a's AABBCCDDEE10: its entry holds it
        assert keys["AABBCCDDEE11"] is next(k for k in plugs if k == "AABBCCDDEE11")  # the hub's string
        earlier = keys["AABBCCDDEE12"]
        reg.refresh()
        assert next(k for k in reg._away if k == "AABBCCDDEE12") is earlier  # nor a new one per re-read
        # The bindings still decide whose readings count: a released plug is nobody's until re-bound.
        assert store.release_plug("AABBCCDDEE10")
        assert reg.refresh() == {}
        assert reg.owner("AABBCCDDEE10") is None
        assert reg.admit("site-b", ["AABBCCDDEE10"], 3).admitted == {"AABBCCDDEE10"}
        assert reg.admit("site-a", ["AABBCCDDEE10", "AABBCCDDEE11"], 4).refused == {
            "AABBCCDDEE10": PlugRefusal.FOREIGN_PLUG,
            "AABBCCDDEE11": PlugRefusal.FOREIGN_PLUG,
        }
        assert store.plug_bindings()["AABBCCDDEE10"] == "site-b"  # the store says so too
    finally:
        store.close()


def test_an_entry_holds_its_plugs_binding_and_the_hostile_rules_still_hold(tmp_path: Path) -> None:
    # The bindings of plugs the hub has entries for live in the entries (no map of their own), and what
    # decides whose readings count is unchanged: a foreign site is refused, a released plug belongs to the
    # next site that reports it, an operator's assignment wins over the entry, and a restarted registry
    # (the store's bindings, the checkpoint's entries) agrees.
    store = SqliteStore(tmp_path / "hub.db")
    try:
        plugs: dict[str, HubPlug] = {}
        reg = PlugRegistry(store, max_new_per_batch=10, max_per_site=10, plugs=plugs)
        reg.refresh()
        macs = [f"AABBCCDDEE2{i}" for i in range(4)]
        assert reg.admit("site-a", macs, 1).admitted == set(macs)
        for mac in macs:  # as the hub does for the plugs a batch admitted
            plugs[mac] = HubPlug(new_state(mac, P, T0), "site-a")
            reg.entered(plugs[mac])
        assert reg._away == {} and reg._unbound == set()  # nothing kept apart from the entries
        assert reg.bindings == dict.fromkeys(macs, "site-a") == store.plug_bindings()
        # A foreign site reporting them is refused, every one, and does not bind or move them.
        foreign = reg.admit("site-b", macs, 2)
        assert foreign.admitted == set() and set(foreign.refused.values()) == {PlugRefusal.FOREIGN_PLUG}
        assert {plugs[mac].site_id for mac in macs} == {"site-a"}
        # Released: nobody's; the next site reporting it owns it (in the store too).
        assert store.release_plug(macs[0])
        reg.refresh()
        assert reg.owner(macs[0]) is None and reg.owner(macs[1]) == "site-a"
        assert reg.admit("site-b", [macs[0]], 3).admitted == {macs[0]}
        assert reg.owner(macs[0]) == "site-b" and store.plug_bindings()[macs[0]] == "site-b"
        assert reg.admit("site-a", [macs[0]], 3).refused == {macs[0]: PlugRefusal.FOREIGN_PLUG}
        plugs[macs[0]].site_id = "site-b"  # the hub moves the entry when site-b's readings arrive
        reg.settle(plugs[macs[0]])
        assert macs[0] not in reg._away
        # An operator's assignment wins, before and after the hub moves the entry.
        store.bind_plug(macs[1], "site-c", 4, replace=True)
        assert reg.refresh() == {macs[1]: "site-c"}
        assert reg.owner(macs[1]) == "site-c" and plugs[macs[1]].site_id == "site-a"
        assert reg.admit("site-a", [macs[1]], 5).refused == {macs[1]: PlugRefusal.FOREIGN_PLUG}
        assert reg.admit("site-c", [macs[1]], 5).admitted == {macs[1]}
        # A restart: a new registry over the store's bindings and the checkpoint's entries (one of them
        # saved before the move, one the store never heard of).
        plugs[macs[3]] = HubPlug(new_state(macs[3], P, T0), "site-a")
        store.release_plug(macs[3])
        again: dict[str, HubPlug] = {}
        reg2 = PlugRegistry(store, max_new_per_batch=10, max_per_site=10, plugs=again)
        reg2.refresh()
        for mac, plug in plugs.items():
            again[mac] = HubPlug(plug, "site-a")  # the checkpoint's site for all
            reg2.entered(again[mac])
        for mac, plug in again.items():  # what Hub.start does
            plug.site_id = reg2.bind(mac, plug.site_id, 6)
            reg2.settle(plug)
        assert {mac: p.site_id for mac, p in again.items()} == {
            macs[0]: "site-b",
            macs[1]: "site-c",
            macs[2]: "site-a",
            macs[3]: "site-a",  # unbound in the store: bound again to the checkpoint's site
        }
        assert reg2.bindings == store.plug_bindings() == {mac: p.site_id for mac, p in again.items()}
        assert reg2._away == {} and reg2._unbound == set()
    finally:
        store.close()


def test_copy_and_assign_carry_every_machine_slot_and_only_those() -> None:
    # copy() and assign() are spelled out slot by slot (speed): a slot they missed would silently reset
    # a plug's session or command on every step. Every slot gets a value of its own here.
    state, _t, _mwh = _charging("AABBCCDDEE08")
    state.reason, state.resume, state.disabled, state.stale = "r", Status.AVAILABLE, True, True
    state.uptime_s, state.errors, state.cmd_first_seq, state.cmd_seq = 77, 3, 11, 12
    state.cmd_at_ms, state.high_ms, state.low_ms, state.over_ms = 5, 6, 7, 8
    state.last_session_id = "s0"
    for name in FIELDS:
        assert getattr(state, name) not in (None, 0, ""), name
    copied = state.copy()
    assert type(copied) is MachineState and copied is not state
    assert to_dict(copied) == to_dict(state)
    assert copied.session is not None and state.session is not None
    assert copied.session is not state.session and copied.session == state.session
    copied.session.energy_mwh += 1  # a step on the copy never moves the original's session
    assert copied.session.energy_mwh == state.session.energy_mwh + 1

    plug = HubPlug.of(new_state("AABBCCDDEE08", P, T0), "site-a")
    plug.mirrored_ms, plug.armed_s = 123, 456
    plug.state = state  # what the hub does with a step's result
    assert to_dict(plug) == to_dict(state) and plug.state is plug
    for name in FIELDS:  # each slot and column of the entry, one by one (to_dict says them all)
        assert getattr(plug, name) == getattr(state, name), name
    assert (plug.site_id, plug.mirrored_ms, plug.armed_s) == ("site-a", 123, 456)  # the hub's own slots
    again = plug.copy()  # a step on the hub's entry works on a plain state, without the hub's slots
    assert type(again) is MachineState and to_dict(again) == to_dict(state)


def test_the_latest_sample_and_the_runs_live_in_columns_and_an_entry_gives_its_row_back() -> None:
    # The hub's entry keeps time, counter, uptime, power and the debounce runs in columns (no int or
    # float object per plug, no slot); "no value yet" stays None, a value round-trips exactly, and a
    # dropped entry's row is reused rather than growing the columns.
    fresh = HubPlug(new_state("AABBCCDDEE09", P, T0), "site-a")
    assert (fresh.last_ts_ms, fresh.counter_mwh, fresh.uptime_s, fresh.power_w) == (None, None, None, 0.0)
    assert (fresh.high_ms, fresh.low_ms, fresh.over_ms) == (None, None, None)
    state, _t, mwh = _charging("AABBCCDDEE10")
    assert state.high_ms == 30_000 and state.low_ms is None  # by hand: 3 gaps of 10 s at 2 kW
    used = len(SAMPLES)
    plug = HubPlug(state, "site-a")
    assert len(SAMPLES) == used + 1
    assert (plug.counter_mwh, plug.power_w, plug.high_ms, plug.low_ms) == (mwh, 2000.0, 30_000, None)
    assert plug.last_ts_ms == state.last_ts_ms and plug.uptime_s == state.uptime_s
    assert not any("last_ts_ms" in getattr(cls, "__slots__", ()) for cls in HubPlug.__mro__)
    assert SAMPLES.ts_ms[plug.row] == state.last_ts_ms and SAMPLES.high_ms[plug.row] == 30_000
    plug.counter_mwh = 2**63 - 1  # the largest counter the bounds let through
    plug.over_ms = 0  # a run just begun is 0, not "not holding"
    assert to_dict(plug)["counter_mwh"] == 2**63 - 1 and to_dict(plug)["over_ms"] == 0
    rows = len(SAMPLES.ts_ms)
    row = fresh.row
    del fresh
    again = HubPlug(new_state("AABBCCDDEE11", P, T0), "site-b")
    assert len(SAMPLES.ts_ms) == rows and again.row == row  # the row came back
    assert again.last_ts_ms is None and again.high_ms is None and again.power_w == 0.0  # cleared


def test_a_checkpoint_is_the_same_bytes_whichever_layout_wrote_it_and_loads_into_an_entry() -> None:
    # Before this layout the hub checkpointed plain MachineStates; now its entries are the states. The
    # bytes are the same (an old checkpoint is a new one), and a restored entry bills the same session.
    state, _t, mwh = _charging("AABBCCDDEE12")
    plug = HubPlug(state, "site-a")
    old = ckpt.encode_part(1, {state.mac: ("site-a", state)})
    assert ckpt.encode_part(1, {plug.mac: ("site-a", plug)}) == old
    snap = ckpt.decode(old, lambda mac: P)
    site, restored = snap.plugs[state.mac]
    entry = HubPlug(restored, site)
    assert site == "site-a" and to_dict(entry) == to_dict(state)
    assert entry.session is not None and entry.session.session_id == "s1"
    assert entry.counter_mwh == mwh  # the meter reading the bill continues from


@pytest.mark.parametrize("tri", [None, False, True])
def test_flags_and_the_statuses_round_trip_through_the_entrys_byte_columns(tri: bool | None) -> None:
    # A relay or command state of None ("not known", "none in force") is not False: an entry that
    # turned one into the other would resend, or never send, the relay command. Every value of each
    # flag and every status to resume comes back as it went in, through the entry, its copy and a step.
    for resume in [None, *Status]:
        state = _online("AABBCCDDEE30", T0 + 5)
        state.relay_on, state.cmd_on, state.resume = tri, tri, resume
        state.disabled = state.stale = state.cmd_confirmed = bool(tri)
        plug = HubPlug(state, "site-a")
        got = (plug.relay_on, plug.cmd_on, plug.resume, plug.disabled, plug.stale, plug.cmd_confirmed)
        assert got == (tri, tri, resume, bool(tri), bool(tri), bool(tri))
        assert plug.relay_on is tri and plug.cmd_on is tri and plug.resume is resume
        assert to_dict(plug.copy()) == to_dict(state) == to_dict(plug)
        plug.relay_on = not tri  # the setters write the same columns
        assert plug.relay_on is (not tri) and plug.copy().relay_on is (not tri)
        for status in Status:  # the status too: a byte of its own
            plug.status = status
            assert plug.status is status and plug.copy().status is status and plug.resume is resume


# A checkpoint part written by the layout before the entry's columns (commit 6c2e649: every machine value
# in a slot of its own): plug ...40 charging (session s1 of u1, started at T0 + 10 at counter 5,000,000,
# then four 2 kW readings 10 s apart adding 5,556 mWh each) on site-a, plug ...41 never heard from on
# site-b (OFFLINE, to resume AVAILABLE).
OLD_LAYOUT_PART = base64.b64decode(
    "eF6VVEtv2kAQ/i97phEk0ErcDCEJEkqlHnpdLfYAq669zj5ACPHfO7PjbsxDVesDeOab98znk/BqD5VUQdZeTEffhun5Sj8D"
    "0Zq4Re1JFMVsNp8/Py8W4yHJXgcQ0/T3RYmB8EGR4iRqVaL+wpzRiHHE/K348bp8fyUP3ZRwkXPCOR0obxs0NlZVsoIAZYAK"
    "PRz4WGOSJhozEJX2am0QmG6U8ZCSGEQ7ySgfZPD3ErT2AE4exPQR8z1gxtLGJqCqPuzEdDJ8xGc8ELENugZJQxlOUl1GHSVV"
    "FlzEfOCcdYhSgLrqASRdjXPErRHiobkcdQ/baIdVe/jAnGxd2gaVNbXJWTkEG+z0dpcafOLwxh6SyAOye2opix6811Q9Lo9f"
    "pcaowo9wtNGjbRIjiQ4+ImAlSeNIE5TTmw058xtDgaAyOgdNeUR5u25R0TqNm20x4q8D1qcb6xB7GtLSu8wbwNUzQKPVlUGH"
    "7IZIDNlAkGOy2DqFgXnk0IDbHqUP0EpaG6p4XaRgEwyDonJBrpVR6do4JU78PBC3SpphcrjlQ7ckDnd1L4kwuaJ0RN0Jpapp"
    "BQg3Nt0zSePuGrqzw7uGwEY+2FZmAqRZ2r2mZSmTT9vBXgOerxDYRbrzi4WKM6p7BBxd83X9V77SSjNfv7+8rJbvi7t07drO"
    "1TZWVirQx+APUUXxs1iuitmKAvwHX/l+M01vOcoGnwRl+ZOgLN8hKAM9gl6TspN7ROw0PSJ2X5jMRLTITOQE/0bEzvbeAs/n"
    "31dVzj4="
)


def test_a_checkpoint_written_by_the_old_layout_loads_into_entries_and_bills_the_same() -> None:
    snap = ckpt.decode(OLD_LAYOUT_PART, lambda mac: P)
    entries = {mac: HubPlug(state, site) for mac, (site, state) in snap.plugs.items()}
    a, b = entries["AABBCCDDEE40"], entries["AABBCCDDEE41"]
    assert (a.site_id, a.status, a.relay_on, a.cmd_on, a.cmd_confirmed) == (
        "site-a",
        Status.CHARGING,
        True,
        True,
        True,
    )
    assert a.counter_mwh == 5_000_000 + 4 * 5_556 and a.power_w == 2000.0  # by hand: 5,022,224
    assert a.last_ts_ms == 1_700_000_050_000 and a.uptime_s == 1050  # T0 + 50 s; uptime 1000 + 50
    assert (a.high_ms, a.low_ms, a.over_ms, a.resume, a.stale, a.disabled) == (
        30_000,
        None,
        None,
        None,
        False,
        False,
    )
    assert a.session is not None and (a.session.session_id, a.session.user_id) == ("s1", "u1")
    assert a.session.energy_mwh == 4 * 5_556 and a.session.start_counter_mwh == 5_000_000
    assert (b.site_id, b.status, b.resume, b.relay_on, b.cmd_on, b.last_ts_ms) == (
        "site-b",
        Status.OFFLINE,
        Status.AVAILABLE,
        None,
        None,
        None,
    )
    # What the entry now keeps in columns and lists (the entry is its row's int) came through as well:
    # CHARGING since the fourth reading (T0 + 50 s: 30 s of load), the start's "on" at T0 + 10 s.
    assert (a.mac, a.since_ms, a.reason, a.errors) == ("AABBCCDDEE40", 1_700_000_050_000, "load_detected", 0)
    assert (a.cmd_at_ms, a.cmd_sent_ms, a.cmd_first_seq, a.cmd_seq) == (1_700_000_010_000,) * 2 + (1, 1)
    assert (b.mac, b.since_ms, b.reason, b.cmd_at_ms, b.cmd_sent_ms) == (
        "AABBCCDDEE41",
        1_700_000_000_000,
        "no_data",
        0,
        0,
    )
    assert a.last_session_id == b.last_session_id == "" and a.params is P and b.params is P
    # Written again from the entries: the same bytes (the layout is not in the checkpoint).
    again = ckpt.encode_part(1_700_000_060_000, {mac: (p.site_id, p) for mac, p in entries.items()})
    assert again == OLD_LAYOUT_PART
    # The restored session bills from where the old hub left it: the user stops, the relay goes off, and
    # the bill is the meter's energy since the start (4 x 5,556 + 1,000 mWh more before it switched off).
    t = T0 + 60
    new, fx = step(a, StopRequest(user_id="u1"), t)
    assert [e.on for e in fx if isinstance(e, SendRelay)] == [False]
    a.state = new
    new, fx = step(a, _reading("AABBCCDDEE40", t + 5, 0.0, 5_022_224 + 1_000, False), t + 5)
    (done,) = [e.record for e in fx if isinstance(e, SessionFinished)]
    assert done.energy_mwh == 4 * 5_556 + 1_000 and done.session_id == "s1"
    a.state = new  # the ended session's id, held by row, is checkpointed and restored like the rest
    assert a.session is None and a.last_session_id == "s1"
    snap = ckpt.decode(ckpt.encode_part(1, {a.mac: (a.site_id, a)}), lambda mac: P)
    assert to_dict(snap.plugs[a.mac][1]) == to_dict(a) and snap.plugs[a.mac][1].last_session_id == "s1"


def test_a_sessions_rare_values_share_one_slot_and_each_still_bills_as_set() -> None:
    # Counter resets, stop reason, provisional and review live in one slot (11 slots, 120 B, instead of
    # 14, 144 B). Each is still its own value: setting one never moves another, a copy taken before a
    # change keeps the old values, and what the bill reads (no-load: no session fee) follows them.
    sess = Session("s1", "u1", "r1", TARIFF, 10_000, 1, 5_000_000, energy_mwh=1_000_000)  # 1 kWh at 30p
    assert sys.getsizeof(sess) == 16 + 16 + 11 * 8
    fresh = Session("s2", "u2", "r2", TARIFF, 10_000, 1, 0)
    assert sess.notes is fresh.notes  # no rare value set: one tuple for all sessions
    assert sess.cost().total_minor == 30 + 50  # by hand: 1 kWh x 30p + the 50p session fee
    before = sess.copy()
    sess.counter_resets += 1
    sess.review = "counter_down"
    assert (sess.counter_resets, sess.stop_reason, sess.provisional, sess.review) == (
        1,
        "",
        False,
        "counter_down",
    )
    sess.provisional = True
    sess.stop_reason = StopReason.NO_LOAD
    assert (sess.counter_resets, sess.provisional, sess.review) == (1, True, "counter_down")
    assert sess.cost().total_minor == 30  # no load: no session fee
    assert (before.counter_resets, before.stop_reason, before.provisional, before.review) == (
        0,
        "",
        False,
        "",
    )
    assert before.cost().total_minor == 80 and before != sess
    assert to_dict_session_keys() == list(SESSION_FIELDS)


def to_dict_session_keys() -> list[str]:
    state, _t, _mwh = _charging("AABBCCDDEE50")
    return list(to_dict(state)["session"])


@pytest.mark.parametrize("relay", [None, False, True])
def test_a_quiet_sample_taken_by_the_entry_is_the_one_taken_by_a_plain_state(relay: bool | None) -> None:
    # The quiet-run path writes a sample with one call; the entry writes its columns directly. Both must
    # leave exactly the same state (the flags and runs it resets included), or the fast path would bill
    # or switch differently on the hub than in the machine's own tests.
    state, _t, _mwh = _charging("AABBCCDDEE60")
    state.errors, state.stale, state.over_ms = 3, True, 4_000  # all reset by a quiet sample
    plug = HubPlug(state, "site-a")
    for target in (state, plug):
        target.take_sample(1_700_000_100_000, 1999.5, 5_030_000, None, relay, 40_000, None)
    assert to_dict(plug) == to_dict(state)
    assert (plug.errors, plug.stale, plug.over_ms, plug.uptime_s, plug.relay_on) == (
        0,
        False,
        None,
        None,
        relay,
    )
    assert (plug.last_ts_ms, plug.power_w, plug.counter_mwh, plug.high_ms) == (
        1_700_000_100_000,
        1999.5,
        5_030_000,
        40_000,
    )


def test_the_command_numbers_and_the_timer_second_round_trip_through_four_byte_columns() -> None:
    # The relay command's sequence numbers decide which result confirms which command, and the timer
    # second decides when a plug's timers run: each comes back exactly, "not armed" stays apart from
    # second 0, and a value the columns cannot hold is refused loudly, never stored wrapped.
    plug = HubPlug(new_state("AABBCCDDEE70", P, T0), "site-a")
    assert (plug.cmd_first_seq, plug.cmd_seq, plug.armed_s) == (0, 0, None)
    for seq in (1, 255, 256, 70_000, 2**32 - 1):
        plug.cmd_seq = plug.cmd_first_seq = seq
        assert plug.cmd_seq == plug.cmd_first_seq == seq == plug.copy().cmd_seq
    for second in (0, 1_700_000_000, 4_102_444_800):  # 4,102,444,800: 2100-01-01 in Unix seconds
        plug.armed_s = second
        assert plug.armed_s == second
    plug.armed_s = None
    assert plug.armed_s is None
    with pytest.raises(OverflowError):
        plug.cmd_seq = 2**32
    assert plug.cmd_seq == 2**32 - 1


def _finished(mac: str) -> tuple[HubPlug, float, int]:
    """A hub entry whose session s1 (u1) ran 40 s at 2 kW and was stopped and billed."""
    state, t, mwh = _charging(mac)
    plug = HubPlug(state, "site-a")
    plug.state, _ = step(plug, StopRequest(user_id="u1"), t + 10)
    plug.state, fx = step(plug, _reading(mac, t + 15, 0.0, mwh, False), t + 15)
    (done,) = [e.record for e in fx if isinstance(e, SessionFinished)]
    assert done.session_id == "s1" and done.energy_mwh == 4 * 5_556  # by hand: four 10 s steps at 2 kW
    assert plug.status is Status.AVAILABLE and plug.session is None
    return plug, t + 15, mwh


def test_a_session_the_plug_already_ended_is_not_started_again_nor_rejected_on_the_entry() -> None:
    # The last session's id lives by row in a map (most plugs have none, a slot each before). What it
    # protects: a restart that resumes the store's ACTIVE sessions may hand the plug the session it already
    # ended (its finish not yet written); that must not switch the relay on or open a second bill, and a
    # remote stop for it is no error. A plug with no ended session costs nothing for it.
    plug, t, mwh = _finished("AABBCCDDEE80")
    assert SAMPLES.last_session[plug.row] == "s1" and plug.last_session_id == "s1"
    again = StartRequest("s1", "u1", TARIFF, 10_000, "r1", start_counter_mwh=5_000_000, started_at_ms=1)
    new, fx = step(plug, again, t + 1)
    assert fx == () and new.session is None and new.cmd_on is False  # relay stays off, nothing billed
    new, fx = step(plug, StopRequest("u1", "s1", "", remote=True), t + 2)
    assert fx == ()
    fresh = HubPlug(new_state("AABBCCDDEE81", P, T0), "site-a")
    assert fresh.row not in SAMPLES.last_session and fresh.last_session_id == ""
    # A new session on the same plug starts (and is followed) as before.
    plug.state, fx = step(plug, StartRequest("s2", "u1", TARIFF, 10_000, "r2"), t + 3)
    assert [e.on for e in fx if isinstance(e, SendRelay)] == [True]
    assert plug.session is not None and plug.session.start_counter_mwh == mwh


def test_a_reused_row_starts_clean_so_no_plug_inherits_another_plugs_values() -> None:
    # A dropped entry's row goes to the next entry. Nothing of the old plug may come with it: its ended
    # session's id would make the new plug ignore a real start with that id, its command times would
    # confirm or time out the new plug's commands, its mirror mark would skip the new plug's document.
    keeper = HubPlug(new_state("AABBCCDDEE87", P, T0), "site-a")  # the columns stay: a row is reused
    plug, _t, _mwh = _finished("AABBCCDDEE82")
    plug.errors, plug.reason, plug.mirrored_ms = 2**32 - 1, "device_error:overpower", 1_700_000_000_123
    plug.mirror_due_ms, plug.mark = 1_700_000_001_000, (1, 2, None)
    assert plug.cmd_at_ms and plug.cmd_sent_ms and plug.since_ms
    row = plug.row
    del plug
    assert SAMPLES.macs[row] is None and SAMPLES.sessions[row] is None  # nothing of it is held on
    other = HubPlug(new_state("AABBCCDDEE83", P, T0), "site-b")
    assert other.row == row
    assert (other.last_session_id, other.errors, other.reason, other.mirrored_ms) == ("", 0, "no_data", 0)
    assert (other.cmd_at_ms, other.cmd_sent_ms, other.mirror_due_ms, other.mark) == (0, 0, None, None)
    assert other.since_ms == round(T0 * 1000)
    # The entry is its row's int, but an entry all the same: always true (row 0 too), equal to no other.
    third = HubPlug(new_state("AABBCCDDEE86", P, T0), "site-b")
    assert (
        bool(other)
        and bool(third)
        and other != third
        and repr(other) == f"HubPlug('AABBCCDDEE83', row={row})"
    )
    other.state, fx = step(other, _reading("AABBCCDDEE83", T0 + 5, 0.0, 1_000, False), T0 + 5)
    other.state, fx = step(other, StartRequest("s1", "u9", TARIFF, 10_000, "r9"), T0 + 6)
    assert [e.on for e in fx if isinstance(e, SendRelay)] == [True] and other.session is not None
    assert keeper.mac == "AABBCCDDEE87"


def test_an_entrys_reason_flags_and_profile_round_trip_and_profiles_are_shared() -> None:
    # The reason is an index into a table of distinct reasons (two bytes), the device flags four bytes
    # (the wire's uint32), the site and parameters one shared pair: each comes back as it went in,
    # through a copy and a checkpoint, and moving one plug to another site moves no other plug.
    a = HubPlug(new_state("AABBCCDDEE84", P, T0), "site-a")
    b = HubPlug(new_state("AABBCCDDEE85", P, T0), "site-a")
    assert SAMPLES.profile[a.row] == SAMPLES.profile[b.row] and a.params is P and a.site_id == "site-a"
    for reason in ("", "relay_mismatch: commanded on, plug reports otherwise", "device_error:overpower"):
        for flags in (0, 1, 1 << 15, 2**32 - 1):
            a.reason, a.errors = reason, flags
            assert (a.reason, a.errors) == (reason, flags) == (a.copy().reason, a.copy().errors)
            restored = ckpt.decode(ckpt.encode_part(1, {a.mac: ("site-a", a)}), lambda mac: P)
            assert to_dict(restored.plugs[a.mac][1]) == to_dict(a)
    with pytest.raises(OverflowError):
        a.errors = 2**32
    a.site_id = "site-c"
    assert (a.site_id, b.site_id) == ("site-c", "site-a") and a.params is P
    other = dataclasses.replace(P, start_w=P.start_w + 1)
    b.params = other
    assert (b.params, b.site_id, a.params) == (other, "site-a", P)
