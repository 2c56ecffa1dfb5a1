"""The cost model's store wrapper: every method of the store port is priced, writes counted as the
Firestore store carries them out (no servers: the SQLite store underneath)."""

from __future__ import annotations

from bench.cost import CountingStore  # scripts/ is on sys.path (tests/conftest.py)

from chargectl.common import codec

MAC = "AABBCCDDEEFF"


def session(status: int) -> codec.ChargeSession:
    return codec.ChargeSession(
        session_id="s1",
        user_id="u1",
        plug_mac=MAC,
        status=status,
        started_at_ms=1,  # type: ignore[arg-type]
    )


def debit() -> codec.LedgerEntry:
    return codec.LedgerEntry(
        entry_id="debit-s1",
        user_id="u1",
        kind=codec.LedgerEntry.KIND_SESSION_DEBIT,
        amount=codec.Money(amount_minor=-42, currency="gbp"),
        created_at_ms=2,
    )


def test_every_write_of_the_port_is_counted_as_firestore_documents() -> None:
    store = CountingStore(":memory:")
    store.counting = True
    request = codec.ChargeRequest(
        request_id="r1", user_id="u1", plug_mac=MAC, status=codec.ChargeRequest.STATUS_PENDING
    )
    assert store.add_request(request) and not store.add_request(request)  # a failed create writes nothing
    assert store.answer_request("r1", codec.ChargeRequest.STATUS_ACCEPTED, "", "s1", 5)
    assert not store.answer_request("r1", codec.ChargeRequest.STATUS_ACCEPTED, "", "s1", 6)
    store.put_session(session(codec.ChargeSession.STATUS_ACTIVE))
    # The finish transaction: the session document and its debit, once.
    assert store.finish_session(session(codec.ChargeSession.STATUS_COMPLETED), debit=debit())
    assert not store.finish_session(session(codec.ChargeSession.STATUS_COMPLETED), debit())
    assert store.bind_plug(MAC, "site-a", 1) == "site-a"
    assert store.bind_plug(MAC, "site-b", 2) == "site-a"  # already bound: the create writes nothing
    assert store.writes == {
        "charge_request": 1,
        "request_answer": 1,
        "session": 1,
        "session_finish": 1,
        "debit": 1,
        "plug_binding": 1,
    }
    # Reads go straight through, uncounted; and the money is really there.
    assert store.get_session("s1").status == codec.ChargeSession.STATUS_COMPLETED  # type: ignore[union-attr]
    assert [e.amount.amount_minor for e in store.ledger_entries("u1")] == [-42]
    assert store.writes["debit"] == 1
    store.close()
