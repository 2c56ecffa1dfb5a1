"""The alert book: one open alert per kind and subject, listeners hear every raise."""

from __future__ import annotations

from chargectl.common.alerts import Alert, AlertBook, AlertKind, Severity


def test_one_open_alert_per_kind_and_subject_with_its_age_and_count() -> None:
    book = AlertBook()
    heard: list[Alert] = []
    book.listen(heard.append)
    book.raise_alert(AlertKind.FOREIGN_PLUG, "AABBCCDDEEFF", "site b reported it", 1_000, site_id="b")
    book.raise_alert(AlertKind.PLUG_FAULTED, "AABBCCDDEEFF", "over-power", 2_000, severity=Severity.CRITICAL)
    again = book.raise_alert(AlertKind.FOREIGN_PLUG, "AABBCCDDEEFF", "site b again", 5_000, site_id="b")
    assert (again.first_at_ms, again.last_at_ms, again.count, again.message) == (
        1_000,
        5_000,
        2,
        "site b again",
    )
    assert [a.kind for a in book.open_alerts()] == [AlertKind.FOREIGN_PLUG, AlertKind.PLUG_FAULTED]
    assert len(heard) == 3 and heard[-1] == again
    assert book.resolve(AlertKind.FOREIGN_PLUG, "AABBCCDDEEFF") is True
    assert book.resolve(AlertKind.FOREIGN_PLUG, "AABBCCDDEEFF") is False
    assert [a.kind for a in book.open_alerts()] == [AlertKind.PLUG_FAULTED]
    assert book.raised_total == {"foreign_plug": 2, "plug_faulted": 1}
    assert again.to_dict()["kind"] == "foreign_plug"


def test_the_book_is_bounded_oldest_first() -> None:
    book = AlertBook(max_open=3)
    for i in range(5):
        book.raise_alert(AlertKind.SITE_SILENT, f"site-{i}", "silent", i)
    assert [a.subject for a in book.open_alerts()] == ["site-4", "site-3", "site-2"]
