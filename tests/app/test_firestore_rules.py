"""firestore.rules on the Firestore emulator (``--rules``): every allowed and denied client access.

Clients are played with unsigned ``alg: none`` ID tokens (the emulator evaluates rules for them); the
``owner`` token bypasses rules to seed documents and to check what a denied write left behind.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import backends
import pytest
from firestore_rest import OWNER, Firestore, new_project

ALICE, MALLORY = "uid-alice", "uid-mallory"
MAC = "A8032AB12345"


def now_ms() -> int:
    return int(time.time() * 1000)


def request_doc(doc_id: str, uid: str = ALICE, **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "request_id": doc_id,
        "user_id": uid,
        "plug_mac": MAC,
        "action": "ACTION_START",
        "status": "STATUS_PENDING",
        "created_at_ms": now_ms(),
    }
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not ...}


@pytest.fixture
def fs(firestore_rules_emulator: backends.Server) -> Iterator[Firestore]:
    """A fresh project seeded (bypassing rules) with documents of Alice's and of Mallory's."""
    client = Firestore(firestore_rules_emulator.url, new_project())
    seed = {
        f"users/{ALICE}": {"user_id": ALICE, "email": "alice@example.test", "currency": "gbp"},
        f"users/{MALLORY}": {"user_id": MALLORY, "email": "m@example.test", "currency": "gbp"},
        "ledger/evt_alice": {
            "entry_id": "evt_alice",
            "user_id": ALICE,
            "kind": "KIND_TOPUP",
            "amount": {"amount_minor": 1000, "currency": "gbp"},
        },
        "ledger/evt_mallory": {
            "entry_id": "evt_mallory",
            "user_id": MALLORY,
            "kind": "KIND_TOPUP",
            "amount": {"amount_minor": 500, "currency": "gbp"},
        },
        "sessions/s-alice": {"session_id": "s-alice", "user_id": ALICE, "plug_mac": MAC},
        "sessions/s-mallory": {"session_id": "s-mallory", "user_id": MALLORY, "plug_mac": MAC},
        "charge_requests/r-alice": request_doc("r-alice"),
        "charge_requests/r-mallory": request_doc("r-mallory", MALLORY),
        f"plug_states/{MAC}": {"plug_mac": MAC, "site_id": "site-1", "status": "PLUG_STATUS_AVAILABLE"},
        "sites/site-1": {"site_id": "site-1", "name": "Car park"},
        "processed_events/evt_alice": {"event_id": "evt_alice", "kind": "checkout.session.completed"},
        "checkpoints/hub-0": {"generation": 1, "chunks": 0, "size": 0},
    }
    for path, doc in seed.items():
        client.set(OWNER, path, doc).raise_for_status()
    try:
        yield client
    finally:
        client.close()


def allowed(resp: Any) -> None:
    assert resp.status_code == 200, resp.text


def denied(resp: Any) -> None:
    assert resp.status_code == 403, f"{resp.status_code}: {resp.text}"


def query_hits(resp: Any) -> list[str]:
    allowed(resp)
    return sorted(row["document"]["name"].rsplit("/", 1)[1] for row in resp.json() if "document" in row)


# ----------------------------------------------------------------------------- allowed


@pytest.mark.parametrize("action", ["ACTION_START", "ACTION_STOP"])
def test_user_creates_own_pending_request(fs: Firestore, action: str) -> None:
    allowed(fs.create(fs.token(ALICE), "charge_requests", "r-new", request_doc("r-new", action=action)))
    stored = fs.doc("charge_requests/r-new")
    assert stored is not None and stored["user_id"] == ALICE and stored["action"] == action


def test_user_reads_own_documents(fs: Firestore) -> None:
    token = fs.token(ALICE)
    allowed(fs.get(token, f"users/{ALICE}"))
    allowed(fs.get(token, "ledger/evt_alice"))
    allowed(fs.get(token, "sessions/s-alice"))
    allowed(fs.get(token, "charge_requests/r-alice"))
    assert query_hits(fs.query(token, "ledger", "user_id", ALICE)) == ["evt_alice"]
    assert query_hits(fs.query(token, "sessions", "user_id", ALICE)) == ["s-alice"]
    assert query_hits(fs.query(token, "charge_requests", "user_id", ALICE)) == ["r-alice"]


def test_user_reads_plug_states(fs: Firestore) -> None:
    token = fs.token(ALICE)
    allowed(fs.get(token, f"plug_states/{MAC}"))
    allowed(fs.list(token, "plug_states"))


# ----------------------------------------------------------------------------- unauthenticated


@pytest.mark.parametrize(
    "path",
    [
        f"users/{ALICE}",
        "ledger/evt_alice",
        "sessions/s-alice",
        "charge_requests/r-alice",
        f"plug_states/{MAC}",
    ],
)
def test_unauthenticated_reads_nothing(fs: Firestore, path: str) -> None:
    denied(fs.get(None, path))


def test_unauthenticated_writes_nothing(fs: Firestore) -> None:
    denied(fs.create(None, "charge_requests", "r-anon", request_doc("r-anon")))
    denied(fs.list(None, "plug_states"))
    assert fs.doc("charge_requests/r-anon") is None


def test_token_without_uid_gets_nothing(fs: Firestore) -> None:
    token = fs.token("", user_id="")
    resp = fs.create(token, "charge_requests", "r-empty", request_doc("r-empty", uid=""))
    assert resp.status_code in (401, 403)
    assert fs.doc("charge_requests/r-empty") is None


# ----------------------------------------------------------------------------- forged requests


@pytest.mark.parametrize(
    ("label", "overrides"),
    [
        ("someone else's name", {"user_id": MALLORY}),
        ("no user", {"user_id": ...}),
        ("request_id not the document id", {"request_id": "r-other"}),
        ("no request_id", {"request_id": ...}),
        ("already accepted", {"status": "STATUS_ACCEPTED"}),
        ("already rejected", {"status": "STATUS_REJECTED"}),
        ("unspecified status", {"status": "STATUS_UNSPECIFIED"}),
        ("no status", {"status": ...}),
        ("unspecified action", {"action": "ACTION_UNSPECIFIED"}),
        ("unknown action", {"action": "ACTION_FREE_CHARGE"}),
        ("no action", {"action": ...}),
        ("a session id", {"session_id": "s-alice"}),
        ("an answer", {"reason": "ok", "answered_at_ms": 1}),
        ("a stray field", {"cost_minor": 0}),
        ("empty plug", {"plug_mac": ""}),
        ("plug not a string", {"plug_mac": 42}),
        ("no plug", {"plug_mac": ...}),
        ("no created_at_ms", {"created_at_ms": ...}),
        ("created_at_ms a string", {"created_at_ms": "1"}),
        ("created_at_ms far in the future", {"created_at_ms": 4_102_444_800_000}),
        ("created_at_ms long ago", {"created_at_ms": 1}),
    ],
)
def test_forged_request_is_refused(fs: Firestore, label: str, overrides: dict[str, Any]) -> None:
    denied(fs.create(fs.token(ALICE), "charge_requests", "r-forged", request_doc("r-forged", **overrides)))
    assert fs.doc("charge_requests/r-forged") is None, label


def test_requests_cannot_be_changed_or_deleted(fs: Firestore) -> None:
    token = fs.token(ALICE)
    denied(fs.update(token, "charge_requests/r-alice", {"status": "STATUS_ACCEPTED"}))
    denied(fs.update(token, "charge_requests/r-alice", {"session_id": "s-free"}))
    denied(fs.set(token, "charge_requests/r-alice", request_doc("r-alice", action="ACTION_STOP")))
    denied(fs.delete(token, "charge_requests/r-alice"))
    stored = fs.doc("charge_requests/r-alice")
    assert stored is not None and stored["status"] == "STATUS_PENDING" and stored["action"] == "ACTION_START"
    assert "session_id" not in stored


def test_someone_elses_request_cannot_be_touched(fs: Firestore) -> None:
    token = fs.token(ALICE)
    denied(fs.update(token, "charge_requests/r-mallory", {"action": "ACTION_STOP"}))
    denied(fs.delete(token, "charge_requests/r-mallory"))
    assert fs.doc("charge_requests/r-mallory") is not None


# ----------------------------------------------------------------------------- server-only writes


@pytest.mark.parametrize(
    ("path", "doc"),
    [
        (f"users/{ALICE}", {"user_id": ALICE, "auto_topup_amount": {"amount_minor": 1, "currency": "gbp"}}),
        ("users/uid-new", {"user_id": "uid-new"}),
        (
            "ledger/free-money",
            {
                "entry_id": "free-money",
                "user_id": ALICE,
                "kind": "KIND_TOPUP",
                "amount": {"amount_minor": 100000, "currency": "gbp"},
            },
        ),
        ("sessions/s-fake", {"session_id": "s-fake", "user_id": ALICE}),
        (f"plug_states/{MAC}", {"plug_mac": MAC, "status": "PLUG_STATUS_CHARGING"}),
        ("sites/site-evil", {"site_id": "site-evil"}),
        ("processed_events/evt_x", {"event_id": "evt_x"}),
        ("checkpoints/hub-0", {"generation": 99}),
    ],
)
def test_clients_write_no_server_collection(fs: Firestore, path: str, doc: dict[str, Any]) -> None:
    before = fs.doc(path)
    token = fs.token(ALICE)
    collection, doc_id = path.split("/")
    denied(fs.create(token, collection, doc_id, doc) if before is None else fs.set(token, path, doc))
    if before is not None:
        denied(fs.delete(token, path))
    assert fs.doc(path) == before


def test_ledger_balance_unchanged_by_client_attempts(fs: Firestore) -> None:
    token = fs.token(ALICE)
    denied(fs.update(token, "ledger/evt_alice", {"amount": {"amount_minor": 999999, "currency": "gbp"}}))
    denied(fs.delete(token, "ledger/evt_mallory"))
    assert fs.doc("ledger/evt_alice")["amount"]["amount_minor"] == 1000  # type: ignore[index]
    assert fs.doc("ledger/evt_mallory") is not None


# ----------------------------------------------------------------------------- other users and server docs


@pytest.mark.parametrize(
    "path",
    [
        f"users/{MALLORY}",
        "ledger/evt_mallory",
        "sessions/s-mallory",
        "charge_requests/r-mallory",
        "sites/site-1",
        "checkpoints/hub-0",
        "processed_events/evt_alice",
    ],
)
def test_no_reads_of_other_users_or_server_documents(fs: Firestore, path: str) -> None:
    denied(fs.get(fs.token(ALICE), path))


@pytest.mark.parametrize(
    "collection", ["ledger", "sessions", "charge_requests", "users", "sites", "checkpoints"]
)
def test_no_unfiltered_or_foreign_queries(fs: Firestore, collection: str) -> None:
    token = fs.token(ALICE)
    denied(fs.list(token, collection))
    denied(fs.query(token, collection, "user_id", MALLORY))
