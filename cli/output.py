"""Tables for people and for pipes: identifiers are never cut.

At a terminal a table fits the window, and identifier columns (MACs, ids) fold onto a second line
rather than end in an ellipsis. Piped or redirected, a table is as wide as its content, so
``chargectl plugs | grep`` and a copy-paste see every identifier whole.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["document", "id_column", "plain_enums", "print_table"]


def id_column(table: Table, header: str, **kwargs: Any) -> None:
    """Add a column of identifiers: folded, never truncated."""
    table.add_column(header, overflow="fold", **kwargs)


def print_table(table: Table, *, stderr: bool = False) -> None:
    """Print ``table`` to stdout (or stderr): terminal-wide at a terminal, content-wide in a pipe."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        Console(stderr=stderr).print(table)
        return
    natural = Console(width=100_000, file=stream).measure(table).maximum
    Console(stderr=stderr, width=max(natural, 20), file=stream).print(table)


def _enum_prefix(enum: Any) -> str:
    """The prefix every value name of ``enum`` shares up to an underscore (``PLUG_STATUS_``)."""
    names = [v.name for v in enum.values]
    common = names[0] if names else ""
    for name in names[1:]:
        while not name.startswith(common):
            common = common[:-1]
    return common[: common.rfind("_") + 1] if "_" in common else ""


def plain_enums(doc: dict[str, Any], message: Any) -> dict[str, Any]:
    """``doc`` (from ``codec.to_document(message)``) with every enum as its bare upper-case name.

    The CLI's one JSON enum style: ``"status": "CHARGING"`` for a plug, ``"COMPLETED"`` for a session,
    ``"ACTIVE"`` for a site (never ``PLUG_STATUS_CHARGING`` or ``STATUS_COMPLETED``).
    """
    out = dict(doc)
    for field in message.DESCRIPTOR.fields:
        if field.name not in out:
            continue
        value = out[field.name]
        if field.enum_type is not None:
            prefix = _enum_prefix(field.enum_type)
            if isinstance(value, list):
                out[field.name] = [v.removeprefix(prefix) if isinstance(v, str) else v for v in value]
            elif isinstance(value, str):
                out[field.name] = value.removeprefix(prefix)
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            child = getattr(message, field.name)
            if isinstance(value, list):
                out[field.name] = [plain_enums(v, c) for v, c in zip(value, child, strict=False)]
            elif isinstance(value, dict):
                out[field.name] = plain_enums(value, child)
    return out


def document(message: Any) -> dict[str, Any]:
    """A message for ``--json`` output: its document form with plain enum names."""
    from chargectl.common.codec import to_document

    return plain_enums(to_document(message), message)
