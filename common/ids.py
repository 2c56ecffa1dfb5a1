"""User ids: what every boundary that takes one (ID tokens, operator commands) accepts.

A user id becomes a document id (``users/<uid>``, ledger queries), Stripe metadata and terminal output,
so it must be a plain name: 1-128 printable characters without spaces or ``/``, and not a name a
document store treats specially (``.``, ``..``, ``__x__``). Google's uids (28 letters and digits) are.
"""

from __future__ import annotations

from chargectl.common.errors import ConfigError

__all__ = ["MAX_UID", "check_uid", "valid_uid"]

MAX_UID = 128


def valid_uid(uid: str) -> bool:
    """Whether ``uid`` may name an account (see the module's docstring)."""
    return (
        0 < len(uid) <= MAX_UID
        and uid.isprintable()
        and not any(c.isspace() or c == "/" for c in uid)
        and uid not in (".", "..")
        and not (uid.startswith("__") and uid.endswith("__"))
    )


def check_uid(uid: str) -> str:
    """``uid`` if valid, else ConfigError naming it (escaped: it may hold control characters)."""
    if not valid_uid(uid):
        raise ConfigError(f"invalid user id {uid!r}: 1-{MAX_UID} printable characters, no spaces or '/'")
    return uid
