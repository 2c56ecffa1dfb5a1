"""Charge requests from the store: who may start or stop what, and the answer written back.

The request id is the store's document id. The hub makes every session id (never derived from what a
client wrote) and answers each request exactly once: accepted with the session id, or rejected with a
reason a person can read (:class:`RequestRefusal`, or the machine's own reason such as
``insufficient_balance``). A request older than ``request_max_age_s`` is answered ``expired`` however
long no hub ran; one for a plug bound to a site of another shard is left to that shard's hub
(unanswered here); one with no id, an unknown action, no user or a user with no account (``users/{uid}``)
is rejected and never re-read. The set of handled ids is bounded by age.

Pushed requests (the store's listener) go through :meth:`Requests.handle_async`: the same checks and
answers, with the store's round trips on a small thread pool so a burst is handled concurrently and the
event loop stays free to publish commands. What is decided stays on the loop: a user's requests take
turns (one balance per user: the second start sees the first session), the account and the ledger
balance are read together, and the machine decides on the loop with the plug's state as it is then. A
start's ACTIVE document is then stored before its relay "on" goes out, and answered after that (see
``sessions``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

from chargectl.common import codec
from chargectl.common.clock import Clock
from chargectl.common.ratelimit import RateLimiter
from chargectl.services.adapters.store import Store
from chargectl.services.hub import machine as m
from chargectl.services.hub.billing import Tariff
from chargectl.services.hub.health import Metrics
from chargectl.services.hub.sessions import Balances, Sessions
from chargectl.services.hub.turns import Turns

if TYPE_CHECKING:
    from chargectl.services.hub.registry import HubPlug

__all__ = ["RequestRefusal", "Requests"]

log = logging.getLogger("chargectl.hub")

_PENDING = (codec.ChargeRequest.STATUS_PENDING, codec.ChargeRequest.STATUS_UNSPECIFIED)
IO_THREADS = 48  # store round trips in flight at once (gRPC/SQLite calls waiting, not CPU): a burst of
# 20 requests is 40 reads, then 20 creates and 20 answers, and the stop path shares the threads
T = TypeVar("T")
# "rate_limited" answers waiting for the one thread that writes them; beyond this, a flood's requests are
# left pending (they expire) rather than held in memory.
FLOOD_BACKLOG = 256


class RequestRefusal(StrEnum):
    NO_REQUEST_ID = "no_request_id"
    EXPIRED = "expired"
    CREATED_IN_FUTURE = "created_in_future"
    BAD_ACTION = "bad_action"
    NO_USER = "no_user"
    UNKNOWN_PLUG = "unknown_plug"
    PLUG_OFFLINE = "plug_offline"  # bound to a site here, not heard since this hub started: try again
    NO_ACCOUNT = "no_account"
    DUPLICATE_REQUEST = "duplicate_request"
    RATE_LIMITED = "rate_limited"  # more than [hub] requests_per_user_per_minute from this user


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
        per_user_per_minute: int = 0,
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
        self._created_lock = threading.Lock()  # answers are also written from the request threads
        self.sessions: Sessions | None = None  # set by the hub: starts of pushed requests are deferred
        # Set by the hub: (plug, user) -> the id of that user's session a restart is about to resume on
        # the plug, now marked stopped, or "" (a stop asked while the hub was down is for that session).
        self.stop_recovering: Callable[[str, str], str] = lambda _mac, _user: ""
        self.bound: Callable[[str], bool] = lambda _mac: False  # set by the hub: is the plug bound to a site?
        self._in_flight: set[str] = set()  # pushed requests being handled (a redelivery waits for them)
        self._turns: Turns[str] = Turns()  # a user's requests take turns
        self._pool: ThreadPoolExecutor | None = None
        # A user's requests beyond the limit never reach the store's reads, and their answers are
        # written by a thread of their own, so a flood cannot queue ahead of other drivers' starts.
        self._limiter = RateLimiter(per_user_per_minute, 60.0) if per_user_per_minute else None
        self._flood_pool: ThreadPoolExecutor | None = None
        self._flood_backlog = 0

    async def io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking store call on the request threads."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="chargectl-requests")
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)  # the hub waited for its requests
            self._pool = None
        if self._flood_pool is not None:
            self._flood_pool.shutdown(wait=False, cancel_futures=True)
            self._flood_pool = None

    def _flooding(self, req: codec.ChargeRequest) -> bool:
        """True if this request is over its user's limit (one token taken otherwise). A stop of the
        user's own live session always goes through: nobody is kept charging (and paying) by a limit."""
        if self._limiter is None:
            return False
        if req.action == codec.ChargeRequest.ACTION_STOP:
            plug = self.plugs.get(req.plug_mac)
            live = plug.state.session if plug is not None else None
            if live is not None and live.user_id == req.user_id:
                return False
        return self._limiter.take(req.user_id, self.clock.monotonic()) > 0

    async def _refuse_flood(self, req: codec.ChargeRequest) -> None:
        """Answer a request over its user's limit "rate_limited" on the flood's own thread, or, with
        :data:`FLOOD_BACKLOG` answers already waiting there, leave it pending (it expires)."""
        rid = req.request_id
        if self._flood_backlog >= FLOOD_BACKLOG:
            with self._created_lock:
                self._created.pop(rid, None)
            self.metrics.inc("requests_ignored_total", reason="rate_limited")
            return
        if self._flood_pool is None:
            self._flood_pool = ThreadPoolExecutor(1, thread_name_prefix="chargectl-flood")
        self._flood_backlog += 1
        try:
            call = functools.partial(self.answer, rid, False, RequestRefusal.RATE_LIMITED, "")
            await asyncio.get_running_loop().run_in_executor(self._flood_pool, call)
        finally:
            self._flood_backlog -= 1

    def _now_ms(self) -> int:
        return round(self.clock.now() * 1000)

    def answer(self, request_id: str, accepted: bool, reason: str, session_id: str) -> None:
        status = codec.ChargeRequest.STATUS_ACCEPTED if accepted else codec.ChargeRequest.STATUS_REJECTED
        with self._created_lock:
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

    def _remember_created(self, rid: str, created_at_ms: int) -> None:
        with self._created_lock:
            self._created[rid] = created_at_ms
            if len(self._created) > 10_000:
                self._created.pop(next(iter(self._created)))

    def prune(self) -> None:
        """Forget handled ids once they are too old to be executed anyway (bounded memory)."""
        horizon = self.clock.monotonic() - 2 * self.max_age_ms / 1000
        if self.handled and next(iter(self.handled.values())) < horizon:
            self.handled = {rid: t for rid, t in self.handled.items() if t >= horizon}

    def refusal(self, req: codec.ChargeRequest) -> RequestRefusal | None:
        """Why a pending request is refused before it reaches a machine, or None if it may go on."""
        why = self._quick_refusal(req)
        if why is not None:
            return why
        self._account = self.store.get_user(req.user_id)
        if self._account is None:
            return RequestRefusal.NO_ACCOUNT
        return None

    def _quick_refusal(self, req: codec.ChargeRequest) -> RequestRefusal | None:
        """:meth:`refusal` without the account read (no store call)."""
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
            # A bound plug this hub has not heard since it started (no checkpoint held it) is a real
            # plug that has not reported yet, not a wrong QR code: the driver may try again shortly.
            return RequestRefusal.PLUG_OFFLINE if self.bound(req.plug_mac) else RequestRefusal.UNKNOWN_PLUG
        return None

    def _learn_balance(self, key: tuple[str, str], before: int | None, read: int) -> None:
        """Keep a balance read off the loop unless the hub changed it meanwhile (a debit or a re-read is
        at least as new as the read's start: a debit must never be undone by a stale read)."""
        if self.balances.known.get(key) == before:
            self.balances.learned(key, read)

    async def handle_async(self, req: codec.ChargeRequest) -> None:
        """:meth:`handle` for a pushed request, with the store's round trips off the loop (module doc)."""
        if req.status not in _PENDING:
            return
        rid = req.request_id
        if rid in self._in_flight:
            return  # being handled: that one answers it
        self._in_flight.add(rid)
        try:
            await self._handle_async(req, rid)
        finally:
            self._in_flight.discard(rid)

    async def _handle_async(self, req: codec.ChargeRequest, rid: str) -> None:
        if rid in self.handled:
            current = await self.io(self.store.get_request, rid)
            if current is None or current.status not in _PENDING:
                return
        self.handled[rid] = self.clock.monotonic()
        if not rid:
            await self.io(self.answer, rid, False, RequestRefusal.NO_REQUEST_ID, "")
            return
        self._remember_created(rid, req.created_at_ms)
        if self.elsewhere(req.plug_mac):
            with self._created_lock:
                self._created.pop(rid, None)
            self.metrics.inc("requests_ignored_total", reason="other_shard")
            return
        if self._flooding(req):
            await self._refuse_flood(req)
            return
        why = self._quick_refusal(req)
        if why is not None:
            await self.io(self.answer, rid, False, why, "")
            return
        start = req.action == codec.ChargeRequest.ACTION_START
        # A start is on its way to a relay "on" from here (answers wait: Sessions.urgent); from its
        # decision its document counts until stored and its "on" until published (CommandSender).
        with self._urgent() if start else contextlib.nullcontext():
            async with self._turns.turn(req.user_id):
                plug = self.plugs[req.plug_mac]
                currency = self.tariff_for(plug.site_id).currency
                key = (req.user_id, currency)
                before = self.balances.known.get(key)
                user = self.io(self.store.get_user, req.user_id)
                if start:
                    account, balance = await asyncio.gather(
                        user, self.io(self.balances.ledger.balance, req.user_id, currency)
                    )
                    self._learn_balance(key, before, balance)
                else:
                    account = await user
                if account is not None:
                    # The decision: on the loop, no await from here to the machine's step.
                    self._account = account
                    effects, session_id = self._decide(req, plug, deferred=True)
        if account is None:
            await self.io(self.answer, rid, False, RequestRefusal.NO_ACCOUNT, "")
            return
        if effects is None:
            await self.io(self.answer, rid, True, "", session_id)  # started before; the answer was lost
        elif not start and not any(isinstance(f, m.RejectRequest) for f in effects):
            await self.io(self.answer, rid, True, "", session_id)
        elif not effects:
            await self.io(self.answer, rid, False, RequestRefusal.DUPLICATE_REQUEST, session_id)

    def _urgent(self) -> contextlib.AbstractContextManager[None]:
        """A start, heard until decided, is on the way to its relay "on" (answers wait: ``Sessions.urgent``)."""
        return self.sessions.urgent.busy() if self.sessions is not None else contextlib.nullcontext()

    def _decide(
        self, req: codec.ChargeRequest, plug: HubPlug, deferred: bool
    ) -> tuple[tuple[m.Effect, ...] | None, str]:
        """The machine event of an accepted request, applied; (None, session id) if this start already
        runs (its answer was lost). Starts read ``balances.known`` as it is now."""
        rid = req.request_id
        live = plug.state.session
        if req.action == codec.ChargeRequest.ACTION_START:
            if live is not None and live.request_id == rid:
                return None, live.session_id
            session_id = f"sess-{uuid.uuid4().hex}"
            tariff = self.tariff_for(plug.site_id)
            available = self.balances.available(req.user_id, tariff.currency)
            event: m.Event = m.StartRequest(session_id, req.user_id, tariff, available, rid)
            account = self._account
            if account is not None and account.auto_topup_amount.amount_minor > 0:
                self.track_progress(session_id)  # its running cost can trigger the top-up
        else:
            recovering = self.stop_recovering(req.plug_mac, req.user_id)
            if recovering and (live is None or live.session_id != recovering):
                return (), recovering  # resumed straight into its finish, relay off (Hub._try_recover)
            session_id = live.session_id if live else ""
            event = m.StopRequest(req.user_id, "", rid)
        sessions = self.sessions
        if not deferred or sessions is None:
            return self.apply(plug, event), session_id
        sessions.defer_starts = True
        try:
            return self.apply(plug, event), session_id
        finally:
            sessions.defer_starts = False

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
            self._remember_created(rid, req.created_at_ms)
        if not rid:
            self.answer(rid, False, RequestRefusal.NO_REQUEST_ID, "")
            return
        if self.elsewhere(req.plug_mac):
            # Another shard's plug: its hub answers (refusing it unknown_plug here, or starting a
            # session on a plug this hub still remembers from before its site moved, would be wrong).
            with self._created_lock:
                self._created.pop(rid, None)
            self.metrics.inc("requests_ignored_total", reason="other_shard")
            return
        if self._flooding(req):
            self.answer(rid, False, RequestRefusal.RATE_LIMITED, "")
            return
        why = self.refusal(req)
        if why is not None:
            self.answer(rid, False, why, "")
            return
        plug = self.plugs[req.plug_mac]
        if req.action == codec.ChargeRequest.ACTION_START:
            self.balances.read(req.user_id, self.tariff_for(plug.site_id).currency)
        effects, session_id = self._decide(req, plug, deferred=False)
        if effects is None:
            self.answer(rid, True, "", session_id)  # started before; the answer was lost
        elif req.action == codec.ChargeRequest.ACTION_STOP and not any(
            isinstance(f, m.RejectRequest) for f in effects
        ):
            self.answer(rid, True, "", session_id)
        elif not effects:
            self.answer(rid, False, RequestRefusal.DUPLICATE_REQUEST, session_id)
