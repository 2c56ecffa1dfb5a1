"""Charge requests from the store: who may start or stop what, and the answer written back.

The request id is the store's document id. The hub makes every session id (never derived from what a
client wrote) and answers each request exactly once: accepted with the session id, or rejected with a
reason a person can read (:class:`RequestRefusal`, or the machine's own reason such as
``insufficient_balance``). A request older than ``request_max_age_s`` is answered ``expired`` however
long no hub ran; one for a plug bound to a site of another shard is left to that shard's hub
(unanswered here); one with no id, an unknown action, no user or a user with no account (``users/{uid}``)
is rejected and never re-read. The set of handled ids is bounded by age.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import TYPE_CHECKING

from chargectl.common import codec
from chargectl.common.clock import Clock
from chargectl.services.adapters.store import Store
from chargectl.services.hub import machine as m
from chargectl.services.hub.billing import Tariff
from chargectl.services.hub.health import Metrics
from chargectl.services.hub.sessions import Balances

if TYPE_CHECKING:
    from chargectl.services.hub.registry import HubPlug

__all__ = ["RequestRefusal", "Requests"]

log = logging.getLogger("chargectl.hub")

_PENDING = (codec.ChargeRequest.STATUS_PENDING, codec.ChargeRequest.STATUS_UNSPECIFIED)


class RequestRefusal(StrEnum):
    NO_REQUEST_ID = "no_request_id"
    EXPIRED = "expired"
    CREATED_IN_FUTURE = "created_in_future"
    BAD_ACTION = "bad_action"
    NO_USER = "no_user"
    UNKNOWN_PLUG = "unknown_plug"
    NO_ACCOUNT = "no_account"
    DUPLICATE_REQUEST = "duplicate_request"


class Requests:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        metrics: Metrics,
        balances: Balances,
        plugs: Mapping[str, HubPlug],
        apply: Callable[[HubPlug, m.Event], tuple[m.Effect, ...]],
        tariff_for: Callable[[str], Tariff],
        max_age_s: float,
        max_skew_s: float,
        elsewhere: Callable[[str], bool] = lambda _mac: False,
        track_progress: Callable[[str], None] = lambda _session_id: None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.balances = balances
        self.plugs = plugs
        self.apply = apply
        self.tariff_for = tariff_for
        self.max_age_ms = max_age_s * 1000
        self.max_skew_ms = max_skew_s * 1000
        self.elsewhere = elsewhere  # is this plug another shard's hub's (its site's Site.shard)?
        self.track_progress = track_progress  # a session whose running cost its user's top-up watches
        self._account: codec.UserAccount | None = None  # read by the last refusal check
        self.handled: dict[str, float] = {}  # request id -> when handled (monotonic)
        self._created: dict[str, int] = {}  # request id -> created_at_ms, until answered (latency)

    def _now_ms(self) -> int:
        return round(self.clock.now() * 1000)

    def answer(self, request_id: str, accepted: bool, reason: str, session_id: str) -> None:
        status = codec.ChargeRequest.STATUS_ACCEPTED if accepted else codec.ChargeRequest.STATUS_REJECTED
        created_ms = self._created.pop(request_id, 0)
        if self.store.answer_request(request_id, status, str(reason), session_id, self._now_ms()):
            outcome = "accepted" if accepted else "rejected"
            self.metrics.inc("requests_answered_total", outcome=outcome)
            if not accepted:
                self.metrics.inc("requests_rejected_total", reason=str(reason) or "unknown")
            if created_ms > 0:
                self.metrics.observe("request_latency_seconds", max(0, self._now_ms() - created_ms) / 1000)
            if not accepted:
                log.debug("request %r rejected: %s", request_id, reason)

    def prune(self) -> None:
        """Forget handled ids once they are too old to be executed anyway (bounded memory)."""
        horizon = self.clock.monotonic() - 2 * self.max_age_ms / 1000
        if self.handled and next(iter(self.handled.values())) < horizon:
            self.handled = {rid: t for rid, t in self.handled.items() if t >= horizon}

    def refusal(self, req: codec.ChargeRequest) -> RequestRefusal | None:
        """Why a pending request is refused before it reaches a machine, or None if it may go on."""
        now_ms = self._now_ms()
        if req.created_at_ms <= 0 or now_ms - req.created_at_ms > self.max_age_ms:
            return RequestRefusal.EXPIRED
        if req.created_at_ms - now_ms > self.max_skew_ms:
            return RequestRefusal.CREATED_IN_FUTURE
        if req.action not in (codec.ChargeRequest.ACTION_START, codec.ChargeRequest.ACTION_STOP):
            return RequestRefusal.BAD_ACTION
        if not req.user_id:
            return RequestRefusal.NO_USER
        if req.plug_mac not in self.plugs:
            return RequestRefusal.UNKNOWN_PLUG
        self._account = self.store.get_user(req.user_id)
        if self._account is None:
            return RequestRefusal.NO_ACCOUNT
        return None

    def handle(self, req: codec.ChargeRequest) -> None:
        """Turn one pending request into a machine event; answered exactly once (guarded)."""
        if req.status not in _PENDING:
            return
        rid = req.request_id
        if rid in self.handled:
            current = self.store.get_request(rid)
            if current is None or current.status not in _PENDING:
                return
        self.handled[rid] = self.clock.monotonic()
        if rid:
            self._created[rid] = req.created_at_ms
            if len(self._created) > 10_000:
                self._created.pop(next(iter(self._created)))
        if not rid:
            self.answer(rid, False, RequestRefusal.NO_REQUEST_ID, "")
            return
        if self.elsewhere(req.plug_mac):
            # Another shard's plug: its hub answers (refusing it unknown_plug here, or starting a
            # session on a plug this hub still remembers from before its site moved, would be wrong).
            self._created.pop(rid, None)
            self.metrics.inc("requests_ignored_total", reason="other_shard")
            return
        why = self.refusal(req)
        if why is not None:
            self.answer(rid, False, why, "")
            return
        plug = self.plugs[req.plug_mac]
        live = plug.state.session
        if req.action == codec.ChargeRequest.ACTION_START:
            if live is not None and live.request_id == rid:
                self.answer(rid, True, "", live.session_id)  # started before; the answer was lost
                return
            session_id = f"sess-{uuid.uuid4().hex}"
            tariff = self.tariff_for(plug.site_id)
            self.balances.read(req.user_id, tariff.currency)
            available = self.balances.available(req.user_id, tariff.currency)
            event: m.Event = m.StartRequest(session_id, req.user_id, tariff, available, rid)
            account = self._account
            if account is not None and account.auto_topup_amount.amount_minor > 0:
                self.track_progress(session_id)  # its running cost can trigger the top-up
        else:
            session_id = live.session_id if live else ""
            event = m.StopRequest(req.user_id, "", rid)
        effects = self.apply(plug, event)
        if req.action == codec.ChargeRequest.ACTION_STOP and not any(
            isinstance(f, m.RejectRequest) for f in effects
        ):
            self.answer(rid, True, "", session_id)
        elif not effects:
            self.answer(rid, False, RequestRefusal.DUPLICATE_REQUEST, session_id)
