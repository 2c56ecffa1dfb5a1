"""Firestore transactions under contention (fault injection at the SDK seam, no server): a commit the
client gave up on after its own immediate retries is retried as a fresh transaction with back-off, and
anything else is one StoreError at once. Racing refunds on the emulator livelocked without this."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from google.api_core import exceptions as gexc

from chargectl.common.errors import StoreError
from chargectl.services.adapters import firestore_store
from chargectl.services.adapters.firestore_store import FirestoreStore


class _Client:
    def transaction(self, max_attempts: int) -> dict[str, int]:
        return {"max_attempts": max_attempts}


def _store(failures: list[BaseException], calls: list[Any]) -> FirestoreStore:
    """A store whose transactions fail with ``failures`` in turn, then run the body."""
    store = FirestoreStore("contention", client=_Client())

    def transactional(body: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def run(tx: Any) -> Any:
            calls.append(tx)
            if len(calls) <= len(failures):
                raise failures[len(calls) - 1]
            return body(tx)

        return run

    store._firestore = SimpleNamespace(transactional=transactional)
    return store


def _gave_up() -> ValueError:
    try:
        raise ValueError("Failed to commit transaction in 5 attempts.") from gexc.Aborted("contention")
    except ValueError as exc:
        return exc


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(firestore_store.time, "sleep", slept.append)
    return slept


def test_a_commit_the_client_gave_up_on_is_retried_fresh_after_a_pause(sleeps: list[float]) -> None:
    calls: list[Any] = []
    store = _store([_gave_up(), gexc.Aborted("lock timeout"), _gave_up()], calls)
    assert store._transaction("record of event e1", lambda tx: "recorded") == "recorded"
    assert len(calls) == 4  # three contended attempts, then the one that commits
    assert len(sleeps) == 3 and all(s > 0 for s in sleeps)  # a pause before each fresh transaction


def test_contention_that_never_ends_is_one_store_error(sleeps: list[float]) -> None:
    calls: list[Any] = []
    store = _store([_gave_up() for _ in range(10)], calls)
    with pytest.raises(StoreError, match="record of event e1 failed"):
        store._transaction("record of event e1", lambda tx: "recorded", attempts=4)
    assert len(calls) == 4 and len(sleeps) == 3


def test_a_value_error_that_is_not_contention_is_not_retried(sleeps: list[float]) -> None:
    calls: list[Any] = []
    store = _store([ValueError("bad field")], calls)
    with pytest.raises(StoreError, match="bad field"):
        store._transaction("record of event e1", lambda tx: "recorded")
    assert len(calls) == 1 and sleeps == []
