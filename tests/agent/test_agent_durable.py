"""The agent's durable state: batch sequence, spool and command journal survive a new process."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from chargectl.common.errors import StoreError
from chargectl.services.agent.durable import CommandJournal, SequenceCounter, Spool, SpooledBatch, load_epoch


def test_sequence_is_monotonic_across_instances(tmp_path: Path) -> None:
    a = SequenceCounter(tmp_path / "seq")
    assert [a.next(), a.next(), a.next()] == [1, 2, 3]
    b = SequenceCounter(tmp_path / "seq")
    assert b.last == 3 and b.next() == 4
    b.advance_to(2)  # never backwards
    assert b.last == 4
    b.advance_to(10)
    assert SequenceCounter(tmp_path / "seq").next() == 11


@pytest.mark.parametrize(
    "garbage",
    [b"seven\n", b"\xff\xfe12\n", b"-4\n", b"\x00\x00\x00", "4²\n".encode(), b"9" * 40],
    ids=["word", "bad-utf8", "negative", "nul", "unicode-digit", "overflow"],
)
def test_a_corrupt_sequence_file_is_moved_aside_and_counting_restarts(
    tmp_path: Path, garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "seq").write_bytes(garbage)
    seq = SequenceCounter(tmp_path / "seq")
    assert seq.reset and seq.last == 0 and seq.next() == 1
    assert (tmp_path / "seq.corrupt-1").read_bytes() == garbage  # kept for a post-mortem
    assert (tmp_path / "seq").read_text() == "1\n"
    assert any("moved it aside" in r.getMessage() for r in caplog.records)


def test_a_journal_with_invalid_utf8_keeps_every_readable_command(tmp_path: Path) -> None:
    path = tmp_path / "commands.journal"
    path.write_bytes(b"cmd-a 1000\ncmd-\xff\xfe 2000\ncmd-c 3000\ncmd-torn 40")
    journal = CommandJournal(path)
    # The damaged line and the torn last line are gone; the commands that still read are remembered.
    assert "cmd-a" in journal and "cmd-c" in journal and len(journal) == 2
    assert path.read_text() == "cmd-a 1000\ncmd-c 3000\n"
    assert (tmp_path / "commands.journal.corrupt-1").exists()


@pytest.mark.parametrize("garbage", [b"", b"zz\n", b"\xff" * 16, b"0" * 16, b"abc"])
def test_an_epoch_is_made_once_and_a_corrupt_one_replaced(tmp_path: Path, garbage: bytes) -> None:
    path = tmp_path / "epoch"
    first, made = load_epoch(path)
    assert made and 0 < first < 2**64 and oct(path.stat().st_mode & 0o777) == "0o600"
    assert load_epoch(path) == (first, False)  # kept for the life of the state directory
    path.write_bytes(garbage)
    second, made = load_epoch(path)
    assert made and second != first and load_epoch(path) == (second, False)


def batch(seq: int, size: int = 100, readings: int = 3) -> SpooledBatch:
    return SpooledBatch(seq, bytes([seq % 256]) * size, {"batch_seq": str(seq), "site_id": "s1"}, readings)


def test_spool_round_trip_in_seq_order_and_private_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 1 << 20)
    for seq in (3, 1, 2):
        spool.put(batch(seq))
    (tmp_path / "spool" / ".00000000000000000004.batch.tmp").write_bytes(b"half")
    again = Spool(tmp_path / "spool", 1 << 20)
    assert again.seqs() == [1, 2, 3]
    got = again.get(2)
    assert got.data == b"\x02" * 100 and got.attributes == {"batch_seq": "2", "site_id": "s1"}
    assert got.readings == 3
    assert not list((tmp_path / "spool").glob(".*"))  # the interrupted write is gone
    for path in (tmp_path / "spool").glob("*.batch"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again.remove(1)
    assert Spool(tmp_path / "spool", 1 << 20).seqs() == [2, 3]


def test_full_spool_drops_oldest_counts_and_logs(tmp_path: Path, agent_log: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path / "spool", 1 << 20)
    one = (
        len(b"CCSPOOL1")
        + 4
        + len(b'{"attributes": {"batch_seq": "1", "site_id": "s1"}, "readings": 3}')
        + 1000
    )
    spool.max_bytes = 3 * one  # room for exactly three batches of this shape
    for seq in range(1, 6):
        spool.put(batch(seq, size=1000))
    assert spool.seqs() == [3, 4, 5]
    assert spool.dropped_batches == 2 and spool.dropped_readings == 6
    drops = [r.getMessage() for r in agent_log.records if "dropped batch" in r.getMessage()]
    assert len(drops) == 2 and "dropped batch 1 " in drops[0] and "dropped batch 2 " in drops[1]


def test_corrupt_spooled_batch_is_a_store_error(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 1 << 20)
    spool.put(batch(1))
    (tmp_path / "spool" / f"{1:020d}.batch").write_bytes(b"garbage")
    with pytest.raises(StoreError, match="corrupt"):
        Spool(tmp_path / "spool", 1 << 20).get(1)


def test_command_journal_remembers_and_prunes(tmp_path: Path) -> None:
    journal = CommandJournal(tmp_path / "j")
    journal.record("c1", keep_until_ms=1_000)
    journal.record("c2", keep_until_ms=5_000)
    with open(tmp_path / "j", "a") as fh:
        fh.write("c3 9999")  # torn write: no newline, so never acknowledged (nor executed)
    reopened = CommandJournal(tmp_path / "j")
    assert "c1" in reopened and "c2" in reopened and "c3" not in reopened
    assert reopened.prune(now_ms=2_000) == 1  # c1 expired
    after = CommandJournal(tmp_path / "j")
    assert "c1" not in after and "c2" in after and len(after) == 1
    after.record("c4", 9_000)
    assert "c4" in CommandJournal(tmp_path / "j")


def test_command_journal_ignores_a_torn_line(tmp_path: Path) -> None:
    (tmp_path / "j").write_text("c1 100\nc2 5")
    journal = CommandJournal(tmp_path / "j")
    assert "c1" in journal and "c2" not in journal
