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

__all__ = ["id_column", "print_table"]


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
