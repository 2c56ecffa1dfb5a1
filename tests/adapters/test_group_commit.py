"""GroupCommit (the Firestore store's grouped session creates and reads), without a server: callers that
arrive while a group is in flight go together in the next one, each gets its own answer or its own error,
and a failing or buggy group never leaves a caller waiting."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from chargectl.common.errors import StoreError
from chargectl.services.adapters.group_commit import GroupCommit

WAIT_S = 60.0  # generous: only a hang reaches it


class Store:
    """A store seam that records each group and holds the first one until released."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.first_in = threading.Event()
        self.release = threading.Event()
        self.down: set[str] = set()  # items whose write fails
        self.bug = False

    def run(self, items: Sequence[str]) -> list[str | BaseException]:
        self.groups.append(list(items))
        if len(self.groups) == 1:
            self.first_in.set()
            assert self.release.wait(WAIT_S)
        if self.bug:
            raise RuntimeError("bug in the group")
        return [StoreError(f"{i} refused") if i in self.down else f"stored {i}" for i in items]


def burst(group: GroupCommit[str, str], store: Store, items: list[str]) -> dict[str, Future[str]]:
    """The first item's group in flight, then the rest called while it is held."""
    pool = ThreadPoolExecutor(len(items))
    out = {items[0]: pool.submit(group.call, items[0])}
    assert store.first_in.wait(WAIT_S)
    for item in items[1:]:
        out[item] = pool.submit(group.call, item)
    # Every later caller is queued behind the held group before it is released.
    deadline = time.monotonic() + WAIT_S
    while len(group._queue) < len(items) - 1:
        assert time.monotonic() < deadline, "the callers never queued"
        time.sleep(0.005)
    store.release.set()
    pool.shutdown(wait=False)
    return out


def test_callers_during_a_group_in_flight_go_together_each_with_its_own_answer() -> None:
    store = Store()
    group: GroupCommit[str, str] = GroupCommit(store.run, max_items=100, lanes=1)
    items = [f"s{i}" for i in range(12)]
    futures = burst(group, store, items)
    assert {i: f.result(WAIT_S) for i, f in futures.items()} == {i: f"stored {i}" for i in items}
    assert store.groups == [["s0"], items[1:]]  # two round trips for twelve
    assert group.call("late") == "stored late"  # the group is free again: the next caller goes at once
    assert store.groups[-1] == ["late"]


def test_a_refused_item_fails_only_its_own_caller() -> None:
    store = Store()
    store.down = {"s3"}
    group: GroupCommit[str, str] = GroupCommit(store.run, max_items=100, lanes=1)
    futures = burst(group, store, [f"s{i}" for i in range(6)])
    with pytest.raises(StoreError, match="s3 refused"):
        futures["s3"].result(WAIT_S)
    assert [futures[f"s{i}"].result(WAIT_S) for i in (0, 1, 2, 4, 5)] == [
        f"stored s{i}" for i in (0, 1, 2, 4, 5)
    ]


def test_a_group_that_raises_fails_every_caller_in_it_and_hangs_none() -> None:
    store = Store()
    group: GroupCommit[str, str] = GroupCommit(store.run, max_items=100, lanes=1)
    store.bug = True
    futures = burst(group, store, [f"s{i}" for i in range(5)])
    for f in futures.values():
        with pytest.raises(RuntimeError, match="bug in the group"):
            f.result(WAIT_S)
    store.bug = False
    assert group.call("after") == "stored after"


def test_a_group_never_holds_more_than_max_items() -> None:
    store = Store()
    group: GroupCommit[str, str] = GroupCommit(store.run, max_items=4, lanes=1)
    items = [f"s{i}" for i in range(11)]
    futures = burst(group, store, items)
    assert {i: f.result(WAIT_S) for i, f in futures.items()} == {i: f"stored {i}" for i in items}
    assert [len(g) for g in store.groups] == [1, 4, 4, 2]
    assert sorted(i for g in store.groups for i in g) == sorted(items)


def test_a_wrong_count_of_answers_fails_the_group_instead_of_misattributing() -> None:
    group: GroupCommit[str, str] = GroupCommit(lambda items: ["only one"], max_items=10)
    assert group.call("a") == "only one"
    bad: GroupCommit[str, str] = GroupCommit(lambda items: [], max_items=10)
    with pytest.raises(RuntimeError, match="got 0 results"):
        bad.call("a")
    with pytest.raises(ValueError):
        GroupCommit(lambda items: [], max_items=0)
    with pytest.raises(ValueError):
        GroupCommit(lambda items: [], max_items=1, lanes=0)


def test_a_hung_call_holds_up_no_caller_while_a_lane_is_free() -> None:
    # The store hangs on the first call: with two lanes, the calls after it still go (together, on the
    # other lane) and are answered while it hangs; it is answered once the store lets go.
    store = Store()
    group: GroupCommit[str, str] = GroupCommit(store.run, max_items=100, lanes=2)
    pool = ThreadPoolExecutor(8)
    hung = pool.submit(group.call, "hung")
    assert store.first_in.wait(WAIT_S)
    assert group.call("next") == "stored next"  # the free lane, at once
    later = [pool.submit(group.call, f"s{i}") for i in range(5)]
    assert [f.result(WAIT_S) for f in later] == [f"stored s{i}" for i in range(5)]
    assert not hung.done()
    store.release.set()
    assert hung.result(WAIT_S) == "stored hung"
    assert sorted(i for g in store.groups for i in g) == sorted(
        ["hung", "next", *(f"s{i}" for i in range(5))]
    )
    pool.shutdown()
