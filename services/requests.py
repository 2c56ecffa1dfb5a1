"""Start/stop requests as a library: build one, write it to the store, wait for the hub's answer, and
expire it when nobody answered — what ``chargectl session``, the demo and the benchmark all do.

A request the hub has not answered within the caller's wait is marked by the caller itself as
rejected with reason ``expired`` (guarded like every answer: only while still pending). A hub that
starts later therefore never switches a plug on for a user who gave up; and if the hub answered in the
same instant, its answer wins and is what the caller reports.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from chargectl.common import codec
from chargectl.common.errors import ConfigError
from chargectl.common.ids import check_uid
from chargectl.common.readings import normalize_mac
from chargectl.services.adapters.store import Store

__all__ = [
    "EXPIRED_REASON",
    "Answer",
    "RequestStatus",
    "expire_request",
    "make_request",
    "new_request_id",
    "request_and_wait",
    "submit_request",
    "wait_for_answer",
]

EXPIRED_REASON = "expired"
_OPEN = (codec.ChargeRequest.STATUS_PENDING, codec.ChargeRequest.STATUS_UNSPECIFIED)

RequestStatus = Literal["pending", "accepted", "rejected", "expired"]


@dataclass(frozen=True, slots=True)
class Answer:
    """What became of a request, in the CLI's JSON vocabulary."""

    request_id: str
    status: RequestStatus
    reason: str = ""
    session_id: str = ""

    @classmethod
    def of(cls, req: codec.ChargeRequest) -> Answer:
        status: RequestStatus
        if req.status == codec.ChargeRequest.STATUS_ACCEPTED:
            status = "accepted"
        elif req.status == codec.ChargeRequest.STATUS_REJECTED:
            status = "expired" if req.reason == EXPIRED_REASON else "rejected"
        else:
            status = "pending"
        return cls(req.request_id, status, req.reason, req.session_id)

    def to_dict(self) -> dict[str, str]:
        return {
            "request_id": self.request_id,
            "status": self.status,
            "reason": self.reason,
            "session_id": self.session_id,
        }


def new_request_id() -> str:
    return uuid.uuid4().hex[:20]


def make_request(
    user_id: str, plug: str, action: int, now_ms: int, request_id: str | None = None
) -> codec.ChargeRequest:
    """A pending request; the plug's MAC normalised, bad input a :class:`ConfigError` naming it."""
    try:
        mac = normalize_mac(plug)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    check_uid(user_id)
    if action not in (codec.ChargeRequest.ACTION_START, codec.ChargeRequest.ACTION_STOP):
        raise ConfigError(f"unknown request action {action}")
    return codec.ChargeRequest(
        request_id=request_id or new_request_id(),
        user_id=user_id,
        plug_mac=mac,
        action=action,
        status=codec.ChargeRequest.STATUS_PENDING,
        created_at_ms=now_ms,
    )


def submit_request(
    store: Store, user_id: str, plug: str, action: int, now_ms: int, request_id: str | None = None
) -> codec.ChargeRequest:
    """Build a pending request and write it to the store (the hub answers it)."""
    req = make_request(user_id, plug, action, now_ms, request_id)
    store.add_request(req)
    return req


def wait_for_answer(
    store: Store,
    request_id: str,
    wait_s: float,
    *,
    poll_s: float = 0.2,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> codec.ChargeRequest | None:
    """Poll until the request is answered or ``wait_s`` passed; the request as last read."""
    deadline = monotonic() + wait_s
    while True:
        req = store.get_request(request_id)
        if req is not None and req.status not in _OPEN:
            return req
        remaining = deadline - monotonic()
        if remaining <= 0:
            return req
        sleep(min(poll_s, remaining))


def expire_request(store: Store, request_id: str, now_ms: int) -> codec.ChargeRequest | None:
    """Mark a still-pending request expired; if the hub answered first, its answer stands."""
    store.answer_request(request_id, codec.ChargeRequest.STATUS_REJECTED, EXPIRED_REASON, "", now_ms)
    return store.get_request(request_id)


def request_and_wait(
    store: Store,
    user_id: str,
    plug: str,
    action: int,
    wait_s: float,
    *,
    expire: bool = True,
    now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    poll_s: float = 0.2,
) -> Answer:
    """Submit, wait up to ``wait_s`` and (``expire``) expire the request if the hub did not answer."""
    req = submit_request(store, user_id, plug, action, now_ms())
    got = wait_for_answer(store, req.request_id, wait_s, poll_s=poll_s)
    if (got is None or got.status in _OPEN) and expire:
        got = expire_request(store, req.request_id, now_ms())
    return Answer.of(got if got is not None else req)
