"""Hub intake: duplicates and replays are no-ops, forgeries and garbage are dead-lettered with a reason."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from chargectl.common import codec
from chargectl.common.keys import Keyring, SigningKey
from chargectl.common.readings import Reading
from chargectl.services.hub.ingest import Accepted, Ingest, Rejected, SeqWindow, Skipped

A = SigningKey.generate()
B = SigningKey.generate()


def _ingest(shard: int | None = 0) -> Ingest:
    ring = Keyring()
    ring.add_public(A.public_bytes, "site-a")
    ring.add_public(B.public_bytes, "site-b")
    return Ingest(ring, shard=shard)


def _msg(
    seq: int, key: SigningKey = A, site: str = "site-a", shard: str = "0", epoch: int = 0
) -> tuple[bytes, dict[str, str]]:
    batch = codec.Batch(site, seq, (Reading("AABBCCDDEEFF", 1_000 + seq, 1.0, seq, True),), epoch=epoch)
    data, attrs = codec.pack_telemetry(batch, key)
    return data, {**attrs, "shard": shard}


def test_each_batch_is_accepted_once() -> None:
    ing = _ingest()
    first = ing.accept(*_msg(1))
    assert isinstance(first, Accepted) and first.batch is not None and first.batch.batch_seq == 1
    ing.commit(first)
    assert ing.accept(*_msg(1)) == Skipped("duplicate", "site-a")
    second = ing.accept(*_msg(2))
    assert isinstance(second, Accepted)
    # not committed yet (e.g. the hub crashed before processing): a redelivery is processed
    assert isinstance(ing.accept(*_msg(2)), Accepted)


def test_windows_survive_a_checkpoint() -> None:
    ing = _ingest()
    for seq in (1, 2, 5):
        v = ing.accept(*_msg(seq))
        assert isinstance(v, Accepted)
        ing.commit(v)
    restored = _ingest()
    restored.load(ing.to_dict())
    assert [type(restored.accept(*_msg(s))).__name__ for s in (1, 2, 3, 4, 5, 6)] == [
        "Skipped",
        "Skipped",
        "Accepted",
        "Accepted",
        "Skipped",
        "Accepted",
    ]


def test_a_replacement_pi_is_accepted_at_once_and_replays_of_both_are_dropped() -> None:
    ing = _ingest()
    old, new = 0x1111_2222_3333_4444, 0xFFFF_0000_AAAA_5555  # the second above 2**63: fixed64
    for seq in range(1, 101):
        v = ing.accept(*_msg(seq, epoch=old))
        assert isinstance(v, Accepted)
        ing.commit(v)
    # the new Pi starts again at 1: every one of its batches is new
    for seq in (1, 2, 3):
        v = ing.accept(*_msg(seq, epoch=new))
        assert isinstance(v, Accepted) and v.batch is not None and v.batch.epoch == new
        ing.commit(v)
    assert ing.accept(*_msg(2, epoch=new)) == Skipped("duplicate", "site-a")
    assert ing.accept(*_msg(50, epoch=old)) == Skipped("duplicate", "site-a")
    restored = _ingest()
    restored.load(ing.to_dict())
    assert restored.accept(*_msg(3, epoch=new)) == Skipped("duplicate", "site-a")
    assert restored.accept(*_msg(100, epoch=old)) == Skipped("duplicate", "site-a")
    assert isinstance(restored.accept(*_msg(4, epoch=new)), Accepted)


def test_a_site_keeps_windows_for_its_latest_epochs_only() -> None:
    ing = _ingest()
    for epoch in range(1, 21):
        v = ing.accept(*_msg(1, epoch=epoch))
        assert isinstance(v, Accepted)
        ing.commit(v)
    assert len(ing.windows) == 8
    assert ing.accept(*_msg(1, epoch=20)) == Skipped("duplicate", "site-a")


def test_rejections_name_the_reason() -> None:
    ing = _ingest()
    forged = _msg(1, key=B, site="site-a")  # site-b's key speaking for site-a
    v = ing.accept(*forged)
    assert isinstance(v, Rejected) and v.reason == "unverified"
    stranger = _msg(1, key=SigningKey.generate())
    assert isinstance(ing.accept(*stranger), Rejected) and ing.accept(*stranger).reason == "unverified"  # type: ignore[union-attr]
    garbage = ing.accept(b"\x00not protobuf", {"schema": codec.SCHEMA_TELEMETRY, "shard": "0"})
    assert isinstance(garbage, Rejected) and garbage.reason == "malformed"
    other = ing.accept(b"x", {"schema": "something.Else", "shard": "0"})
    assert isinstance(other, Rejected) and other.reason == "bad_schema"
    assert ing.accept(*_msg(1, shard="1")) == Skipped("other_shard", "site-a")
    ing.revoked_sites.add("site-a")
    v = ing.accept(*_msg(7))
    assert isinstance(v, Rejected) and v.reason == "revoked"


def test_command_outcomes_are_accepted() -> None:
    ing = _ingest()
    out = codec.CommandOutcome("c1", "site-a", "AABBCCDDEEFF", True, "executed", 5, True)
    data, attrs = codec.pack_outcome(out, A)
    v = ing.accept(data, {**attrs, "shard": "0"})
    assert isinstance(v, Accepted) and v.outcome == out


@given(st.lists(st.integers(1, 300), max_size=400))
def test_seq_window_is_a_set(seqs: list[int]) -> None:
    w = SeqWindow(max_sparse=10_000)
    for s in seqs:
        w.add(s)
    assert {s for s in range(1, 301) if w.seen(s)} == set(seqs)


def test_seq_window_is_bounded() -> None:
    w = SeqWindow(max_sparse=3)
    for s in (10, 20, 30, 40):
        w.add(s)
    assert len(w.sparse) == 3 and w.low == 10 and w.seen(5) and not w.seen(15)
