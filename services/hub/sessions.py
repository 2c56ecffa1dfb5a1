"""Session documents and the money: balances per user and currency, shared by a user's live sessions,
and the one-transaction finish (COMPLETED document + ledger debit) that bills a session exactly once.

- A user's live sessions share one balance: each machine is told the balance less what the user's other
  live sessions (same currency) have used, so out of credit is judged across all of them; a start needs
  that remainder to reach the tariff's start minimum.
- A debit is at most the available balance; energy the machine held back (beyond the plug's physical
  bound, a counter that went down) or a cost beyond the balance sets the document's ``review_reason``
  and raises a ``needs_review`` alert.
- A finish the store refused is kept (and checkpointed) and retried every tick until written.
- A live session of a user with automatic top-up on (at its start) has its document carry its energy
  and running cost, rewritten at most every ``progress_interval_s`` (never once it began finishing:
  the finish owns the document then), so the auto top-up's running-cost check sees the cost grow.
  Other sessions' documents are written at start and finish only (each progress write is a billed
  document write).
- Once a debit is written, ``on_debit(user)`` is called (the hub's auto top-up port).
- A start decided for a pushed request (``defer_starts``) has its ACTIVE document created (never
  overwriting one: a finish that landed first wins) off the event loop, retried while the store is
  down; its relay "on" is held (``unstored``, read by the command sender) until the document is stored,
  so a crash never leaves a relay on with no session document. A finish begun before then has its stop
  reason written into that document (a restart closes the session). The request is answered last.
- The serving hub's stop path (``defer_finishes``) keeps the store off the event loop too: the decision
  is the machine's, on the loop; the stop-reason note, the balance read and the finish transaction run
  on the request threads (``io``), and each result is applied on the loop. A finish enters ``pending``
  (and so the checkpoint) the moment the machine ends the session, billed from the balance known then;
  the balance read refines it before anything is written. A user's finishes take turns (one balance:
  the next debit sees the one before), a session's finish waits for its own start document and
  stop-reason note (neither may land over the COMPLETED document), and a finish the store refused
  stays pending for the tick's retry sweep (one write at a time, stopping at the first failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from chargectl.common import codec
from chargectl.common.alerts import AlertBook, AlertKind
from chargectl.common.errors import StoreError
from chargectl.services.adapters.store import Store
from chargectl.services.adapters.timeseries import SessionEvent, TimeSeries
from chargectl.services.hub import machine as m
from chargectl.services.hub.checkpoint import Finish
from chargectl.services.hub.health import Metrics
from chargectl.services.hub.stops import StopJournal
from chargectl.services.hub.turns import Turns
from chargectl.services.payments.ledger import Ledger

if TYPE_CHECKING:
    from chargectl.services.hub.registry import HubPlug

__all__ = ["Balances", "Sessions"]

log = logging.getLogger("chargectl.hub")

Answer = Callable[[str, bool, str, str], None]  # request id, accepted, reason, session id
TopupCheck = Callable[[str], str]  # user id -> what happened (AutoTopup.check_user), run off the loop
Io = Callable[..., Awaitable[Any]]  # run a blocking store call off the event loop: io(fn, *args)
ANSWER_WAIT_S = 1.0  # how long a started request's answer waits for the burst's starts to be stored


async def _to_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


def _start_document(
    plug: HubPlug, fx: m.SessionStarted, existing: codec.ChargeSession | None
) -> codec.ChargeSession:
    return codec.ChargeSession(
        session_id=fx.session_id,
        user_id=fx.user_id,
        plug_mac=fx.mac,
        site_id=plug.site_id,
        status=codec.ChargeSession.STATUS_ACTIVE,
        started_at_ms=existing.started_at_ms if existing else fx.started_at_ms,
        start_counter_mwh=fx.start_counter_mwh,
        tariff_id=fx.tariff.tariff_id,
        request_id=fx.request_id,
        cost=codec.Money(amount_minor=0, currency=fx.tariff.currency),
    )


def _cost(plug: HubPlug) -> int:
    sess = plug.state.session
    return sess.cost().total_minor if sess is not None else 0


class _Live:
    """One live user (a user id and a currency with a live session): its sessions' plugs, held directly
    while there is one (most users) and MAC -> plug once there are several, and its check schedule.
    One object per live user instead of an entry in each of several maps and sets."""

    __slots__ = (
        "checked_ms",
        "currency",
        "due_ms",
        "plugs",
        "rate",
        "read_ms",
        "sids",
        "spent",
        "touched",
        "user_id",
    )

    def __init__(self, user_id: str, currency: str, plug: HubPlug, session_id: str) -> None:
        self.user_id = user_id
        self.currency = currency
        self.plugs: HubPlug | dict[str, HubPlug] = plug
        self.sids: str | dict[str, str] = session_id  # the session each plug is followed for
        self.touched = False  # in the balances' ``_touched`` list
        self.due_ms: int | None = None  # when it is checked next (None: not scheduled)
        self.read_ms: int | None = None  # when its balance was read
        self.checked_ms: int | None = None  # its last check, what its sessions had spent then and
        self.spent = 0  # the spend rate seen (minor units per ms)
        self.rate = 0.0

    def key(self) -> tuple[str, str]:
        return (self.user_id, self.currency)

    def plug_list(self) -> list[HubPlug]:
        plugs = self.plugs
        return list(plugs.values()) if isinstance(plugs, dict) else [plugs]

    def add(self, mac: str, plug: HubPlug, session_id: str) -> int:
        """One more live session (on ``plug``); returns how many it has now."""
        plugs, sids = self.plugs, self.sids
        if not isinstance(plugs, dict) or not isinstance(sids, dict):
            assert isinstance(sids, str) and not isinstance(plugs, dict)
            first = plugs.state.mac
            plugs = self.plugs = {first: plugs}
            sids = self.sids = {first: sids}
        plugs[mac] = plug
        sids[mac] = session_id
        return len(plugs)

    def remove(self, mac: str) -> int:
        """``mac``'s session is no longer live; returns how many are left."""
        plugs, sids = self.plugs, self.sids
        if not isinstance(plugs, dict) or not isinstance(sids, dict):
            assert not isinstance(plugs, dict)
            return 0 if plugs.state.mac == mac else 1
        plugs.pop(mac, None)
        sids.pop(mac, None)
        if len(plugs) == 1:  # one left: held directly again
            (self.plugs,) = plugs.values()
            (self.sids,) = sids.values()
        return len(plugs)


class Balances:
    """Ledger balances per ``(user, currency)``, and what each live session may still spend.

    The hub tells it which plugs hold a live session (:meth:`track`, after every event a machine
    handles), so a user's sessions are found without walking the plugs. A live user's balance is
    re-read from the ledger (:meth:`due`, every tick, O(users due)) when:

    - it is ``max_stale_s`` old: a refund or a dispute the payments process posted reaches the
      machines within that bound, even from a store that cannot say its ledger changed;
    - what the user's sessions spend could use up what is left of it before the check after next
      (spend rate from the cost's growth since the last check): a top-up is seen before the machine
      stops for lack of credit, and a session already out of credit is re-read every ``refresh_s``;
    - the store says the user's ledger changed (:meth:`changed`; SQLite, cheaply).

    Between reads a user is only checked (costs added up, no store access), at most every
    ``refresh_s`` and at least before half of the remaining headroom could be spent.
    """

    def __init__(
        self,
        ledger: Ledger,
        now_ms: Callable[[], int] = lambda: 0,
        refresh_s: float = 10.0,
        max_stale_s: float = 300.0,
    ) -> None:
        self.ledger = ledger
        self.now_ms = now_ms
        self.refresh_ms = max(1, round(refresh_s * 1000))
        self.max_stale_ms = max(self.refresh_ms, round(max_stale_s * 1000))
        self.known: dict[tuple[str, str], int] = {}
        # The live users: one object each (its sessions and its schedule), keyed by the user id (no key
        # tuple per user); a user's other currencies with a live session, rare, in ``_more``.
        self.live: dict[str, _Live] = {}
        self._more: dict[str, list[_Live]] = {}
        self.reads = 0  # ledger reads of one user (counted for the benchmark and the tests)
        self._live_of: dict[str, _Live] = {}  # MAC -> the live user its session counts for
        self._multi: set[_Live] = set()  # users with several live sessions: shares move
        self._touched: list[_Live] = []  # users whose shares must be recomputed (marked ``touched``)
        # When each live user is checked next: users in buckets by that time (a heap of the times), not
        # a heap entry each; a user's entry is stale when its ``due_ms`` says another time.
        self._buckets: dict[int, tuple[int, list[_Live]]] = {}  # time -> (the same int, users)
        self._times: list[int] = []
        self._last_read: tuple[tuple[str, str], int] | None = None  # the latest read: (user key, when)
        self._reading: dict[tuple[str, str], int | None] = {}  # reads in flight: user key -> figure then

    def load(self) -> None:
        self.known = self.ledger.balances_by_currency()

    def read(self, user_id: str, currency: str) -> int:
        """The ledger balance now (top-ups land from other processes); remembered."""
        key = (user_id, currency)
        balance = self.ledger.balance(user_id, currency)
        self._remember(key, balance)
        self.reads += 1
        return balance

    def learned(self, key: tuple[str, str], balance: int) -> None:
        """A balance read elsewhere (a request's read off the loop): counts as a read of ``key``."""
        self._remember(key, balance)
        self.reads += 1

    def _remember(self, key: tuple[str, str], balance: int) -> None:
        live = self._find(*key)
        if live is not None and self.known.get(key) != balance:
            self._touch(live)
        self.known[key] = balance
        now = self.now_ms()
        self._last_read = (key, now)
        if live is not None:
            live.read_ms = now

    def _find(self, user_id: str, currency: str) -> _Live | None:
        """The live user ``(user_id, currency)`` (None: no live session in that currency)."""
        live = self.live.get(user_id)
        if live is None or live.currency == currency:
            return live
        for other in self._more.get(user_id, ()):
            if other.currency == currency:
                return other
        return None

    def _touch(self, live: _Live) -> None:
        if not live.touched:
            live.touched = True
            self._touched.append(live)

    def plugs_of(self, key: tuple[str, str]) -> list[HubPlug]:
        """The plugs of ``key``'s live sessions (none when it has none)."""
        live = self._find(*key)
        return [] if live is None else live.plug_list()

    def others_cost(self, user_id: str, currency: str, except_session: str = "") -> int:
        """What the user's other live sessions in ``currency`` have used so far (minor units)."""
        total = 0
        for p in self.plugs_of((user_id, currency)):
            sess = p.state.session
            if sess is not None and sess.session_id != except_session:
                total += sess.cost().total_minor
        return total

    def available(self, user_id: str, currency: str, except_session: str = "") -> int:
        return self.known.get((user_id, currency), 0) - self.others_cost(user_id, currency, except_session)

    # ------------------------------------------------------------------ which sessions are live

    def track(self, plug: HubPlug) -> None:
        """Follow ``plug``'s session (or its end) after its machine handled an event."""
        sess = plug.session  # the entry is its own state (``plug.state is plug``): read it directly
        mac = plug.mac
        had = self._live_of.get(mac)
        if sess is None:
            if had is not None:
                self._leave(mac, had)
            return
        if had is not None:
            sids = had.sids  # the session followed on this plug
            if (sids if isinstance(sids, str) else sids.get(mac)) == sess.session_id:
                return
            self._leave(mac, had)
        user_id, currency = sess.user_id, sess.tariff.currency
        live = self._find(user_id, currency)
        if live is None:
            live = _Live(user_id, currency, plug, sess.session_id)  # its only session: no container
            if user_id in self.live:
                self._more.setdefault(user_id, []).append(live)
            else:
                self.live[user_id] = live
            self._live_of[mac] = live
            now = self.now_ms()
            last = self._last_read
            if last is not None and last[1] == now and last[0] == (user_id, currency):
                live.read_ms = now  # read for this start a moment ago (the request path)
            self._schedule(live, now + self.refresh_ms)
        else:
            self._live_of[mac] = live
            if live.add(mac, plug, sess.session_id) > 1:
                self._multi.add(live)
        self._touch(live)

    def _leave(self, mac: str, live: _Live) -> None:
        del self._live_of[mac]
        left = live.remove(mac)
        if left < 2:
            self._multi.discard(live)
        if left:
            self._touch(live)
            return
        live.due_ms = None  # its bucket entries are stale now
        user_id = live.user_id
        more = self._more.get(user_id)
        if self.live.get(user_id) is live:
            if more:  # another currency of the user is still live: it takes the user's key
                self.live[user_id] = more.pop()
            else:
                del self.live[user_id]
        elif more is not None:
            more.remove(live)
        if more is not None and not more:
            del self._more[user_id]

    def _schedule(self, live: _Live, at_ms: int) -> None:
        entry = self._buckets.get(at_ms)
        if entry is None:
            entry = self._buckets[at_ms] = (at_ms, [])
            heapq.heappush(self._times, at_ms)
        entry[1].append(live)
        live.due_ms = entry[0]  # users checked at one time share its int

    # ------------------------------------------------------------------ refreshing

    def due(self) -> int:
        """Check the live users whose check is due (see the class docstring), reading their balances
        here and now; returns the ledger reads. The serving hub uses :meth:`due_reads` instead."""
        reads = self.reads
        for key in self.due_reads():
            balance: int | None = None
            with contextlib.suppress(StoreError):  # the store is down: the next check tries again
                balance = self.ledger.balance(*key)
            self.read_back(key, balance)
        return self.reads - reads

    def due_reads(self, limit: int | None = None) -> list[tuple[str, str]]:
        """Check the live users whose check is due; returns those whose balance must be read. The caller
        reads them (off the event loop) and hands each result to :meth:`read_back`; until then the user
        is not checked again. With ``limit``, checks stop while that many reads are in flight (the
        users still due are checked on a later call)."""
        now = self.now_ms()
        times = self._times
        out: list[tuple[str, str]] = []
        while times and times[0] <= now and (limit is None or len(self._reading) < limit):
            at = times[0]
            keys = self._buckets[at][1]
            keys.sort(key=_Live.key, reverse=True)  # popped from the end: in key order, as a heap gave
            while keys and (limit is None or len(self._reading) < limit):
                live = keys.pop()
                if live.due_ms != at:
                    continue  # rescheduled, or no longer live
                live.due_ms = None
                if self._check(live, now):
                    key = live.key()
                    self._reading[key] = self.known.get(key)
                    out.append(key)
            if keys:
                break  # the limit: the rest of this time's users are checked on a later call
            heapq.heappop(times)
            del self._buckets[at]
        return out

    def read_back(self, key: tuple[str, str], balance: int | None) -> None:
        """The ledger balance of ``key`` read for :meth:`due_reads` (None: the read failed). Kept unless
        the hub changed the figure since the read was decided (a debit posted meanwhile is at least as
        new as the read: it must never be undone); the user's next check is scheduled from it."""
        before = self._reading.pop(key, None)
        if balance is not None:
            if self.known.get(key) == before:
                self._remember(key, balance)
            self.reads += 1
        live = self._find(*key)
        if live is None or live.due_ms is not None:
            return  # no longer live, or scheduled since
        now = self.now_ms()
        spent = sum(_cost(p) for p in live.plug_list())
        self._plan(live, now, self.known.get(key, 0) - spent, live.rate)

    def reading(self, key: tuple[str, str]) -> bool:
        """A read of ``key`` decided by :meth:`due_reads` has not come back yet."""
        return key in self._reading

    def _check(self, live: _Live, now: int) -> bool:
        """Check ``live`` now; True when its balance must be read (its next check is then scheduled by
        :meth:`read_back`), else its next check is scheduled here."""
        plugs = live.plug_list()
        if not plugs:
            return False
        spent = sum(_cost(p) for p in plugs)
        rate = 0.0  # minor units per ms, over the time since the last check
        last_ms = live.checked_ms
        if last_ms is not None and now > last_ms:
            rate = max(0, spent - live.spent) / (now - last_ms)
        live.rate = rate
        live.checked_ms, live.spent = now, spent
        headroom = self.known.get((live.user_id, live.currency), 0) - spent
        read_ms = live.read_ms
        if read_ms is None or now - read_ms >= self.max_stale_ms or headroom <= rate * 2 * self.refresh_ms:
            return True
        self._plan(live, now, headroom, rate)
        return False

    def _plan(self, live: _Live, now: int, headroom: int, rate: float) -> None:
        """Schedule ``live``'s next check from its headroom and spend rate."""
        if headroom <= 0:
            wait = self.refresh_ms  # out of credit: look for a top-up every refresh
        elif rate > 0:
            wait = min(self.max_stale_ms, max(self.refresh_ms, round(headroom / rate / 2)))
        else:
            wait = self.max_stale_ms
        read_ms = now if live.read_ms is None else live.read_ms
        self._schedule(live, max(now + 1, min(now + wait, read_ms + self.max_stale_ms)))

    def changed(self, user_ids: Iterable[str]) -> None:
        """The store says these users' ledgers changed: re-read the live ones now."""
        for user_id in set(user_ids):
            if user_id in self.live:
                with contextlib.suppress(StoreError):  # its staleness bound still holds
                    self.refresh_user(user_id)

    def refresh_user(self, user_id: str) -> None:
        """Re-read all of one user's balances (the ledger is append-only: a currency never vanishes)."""
        balances = self.ledger.balances_of(user_id)
        self.reads += 1
        for currency, amount in balances.items():
            self._remember((user_id, currency), amount)

    def updates(self) -> list[tuple[HubPlug, m.BalanceUpdate]]:
        """The live sessions whose share of their user's balance changed, with the update to apply.

        Only users whose balance was re-read, whose sessions came or went, or who have several live
        sessions (each one's cost moves the others' shares) are looked at; costs are computed only for
        users with more than one live session."""
        touched = self._touched
        self._touched = []
        for live in touched:
            live.touched = False
        out = []
        for live in {*touched, *self._multi}:
            if self._find(live.user_id, live.currency) is not live:
                continue  # no longer live
            plugs = live.plug_list()
            balance = self.known.get((live.user_id, live.currency))
            if not plugs or balance is None:
                continue
            # A user's only session needs no cost figure: its share is the whole balance.
            costs = [0] if len(plugs) == 1 else [_cost(p) for p in plugs]
            total = sum(costs)
            for plug, own in zip(plugs, costs, strict=True):
                sess = plug.state.session
                assert sess is not None
                available = balance - (total - own)
                if available != sess.balance_minor:
                    out.append((plug, m.BalanceUpdate(sess.user_id, available)))
        return out

    def debited(self, entry: codec.LedgerEntry) -> None:
        key = (entry.user_id, entry.amount.currency)
        self.known[key] = self.known.get(key, 0) + entry.amount.amount_minor
        live = self._find(*key)
        if live is not None:
            self._touch(live)


class Urgent:
    """The store calls on the way to a relay "on" in flight (a pushed start's account and balance reads,
    its ACTIVE document). The answers of started requests are written once none is, or after
    ``max_wait_s`` at the latest: a burst's reads and creates must not queue at the store behind the
    answers of its first starts (the Firestore emulator, with the request listener on, answers writes one
    after another). Used on the event loop only."""

    def __init__(self, max_wait_s: float = ANSWER_WAIT_S) -> None:
        self.max_wait_s = max_wait_s
        self.count = 0
        self._waiters: list[asyncio.Future[None]] = []

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        self.count += 1
        try:
            yield
        finally:
            self.count -= 1
            if self.count == 0:
                waiters, self._waiters = self._waiters, []
                for w in waiters:
                    if not w.done():
                        w.set_result(None)

    async def quiet(self) -> None:
        """Return once nothing urgent is in flight, or after ``max_wait_s``."""
        if self.count == 0:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, self.max_wait_s)
        except TimeoutError:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)


class Sessions:
    def __init__(
        self,
        store: Store,
        timeseries: Callable[[], TimeSeries],
        balances: Balances,
        metrics: Metrics,
        alerts: AlertBook,
        answer: Answer,
        now_ms: Callable[[], int],
        progress_interval_s: float = 300.0,
        on_debit: Callable[[str], None] = lambda _user: None,
    ) -> None:
        self.store = store
        self.timeseries = timeseries
        self.balances = balances
        self.metrics = metrics
        self.alerts = alerts
        self.answer = answer
        self.now_ms = now_ms
        self.pending: dict[str, Finish] = {}  # finishes the store has not taken yet
        self.progress_ms = round(progress_interval_s * 1000)
        self.on_debit = on_debit
        # Set by the hub: a session's finish is written (session id, plug): its id need not be kept.
        self.settled: Callable[[str, str], None] = lambda _session_id, _mac: None
        self._progress_at: dict[str, int] = {}  # live session id -> when its progress was last written
        self.tracked: set[str] = set()  # live sessions whose progress is written (auto top-up users)
        # Starts of pushed requests (Requests.handle_async sets defer_starts around its decision): the
        # ACTIVE document is written off the loop; unstored holds each one's relay "on" until it is.
        self.defer_starts = False
        self.unstored: dict[str, asyncio.Future[bool]] = {}
        self.io: Io = _to_thread
        self._start_writes: set[asyncio.Task[None]] = set()
        self._stopping: dict[str, str] = {}  # unstored session -> stop reason, for its document
        # The stop path off the loop (the serving hub sets defer_finishes; see the module docstring).
        self.defer_finishes = False
        self._notes: dict[str, asyncio.Task[None]] = {}  # session -> its stop-reason note in flight
        self._note_backoff: set[str] = set()  # notes waiting to retry after the store refused them
        self._closing = False  # the hub is stopping: refused notes are not retried (stop_notes)
        self._finishes: set[asyncio.Task[Any]] = set()  # finish decisions, writes and retry sweeps
        self._owned: set[str] = set()  # pending finishes a task is deciding or writing (retry skips them)
        self._turns: Turns[tuple[str, str]] = Turns()  # a user balance's finishes take turns
        self._sweep: asyncio.Task[None] | None = None
        self._start_of: dict[str, asyncio.Task[None]] = {}  # session -> its start document being written
        self.stops: StopJournal | None = None  # the hub's local stop journal (services/hub/stops.py)
        # Sessions a restart found COMPLETED in the store but live in its checkpoint: closed, not billed.
        self.billed_before: set[str] = set()
        self.urgent = Urgent()  # store calls on the way to a relay "on" (Requests counts its reads here)

    def started(self, plug: HubPlug, fx: m.SessionStarted) -> None:
        if self.defer_starts and fx.request_id:
            self._defer_start(plug, fx)
            return
        existing = self.store.get_session(fx.session_id)
        if existing is not None and (
            existing.status == codec.ChargeSession.STATUS_COMPLETED or existing.user_id != fx.user_id
        ):
            # Never overwrite a session document (hub-made ids make this a bug or a replay).
            log.error("session %s already has a document; not overwriting it", fx.session_id)
            self.answer(fx.request_id, True, "", fx.session_id)
            return
        self.store.put_session(_start_document(plug, fx, existing))
        self._started_event(plug, fx)
        self.answer(fx.request_id, True, "", fx.session_id)
        log.info("session %s started on %s for %s", fx.session_id, fx.mac, fx.user_id)

    def _started_event(self, plug: HubPlug, fx: m.SessionStarted) -> None:
        self.timeseries().add_session_event(
            SessionEvent(
                fx.started_at_ms,
                plug.site_id,
                fx.mac,
                fx.session_id,
                fx.user_id,
                "started",
                currency=fx.tariff.currency,
            )
        )

    def _defer_start(self, plug: HubPlug, fx: m.SessionStarted) -> None:
        """A pushed request's start (see the module docstring): the decision is made, the store work goes
        off the loop, and the relay "on" is held until the ACTIVE document is stored."""
        loop = asyncio.get_running_loop()
        held: asyncio.Future[bool] = loop.create_future()
        self.unstored[fx.session_id] = held
        self._started_event(plug, fx)
        task = loop.create_task(self._store_start(_start_document(plug, fx, None), fx.request_id, held))
        self._start_writes.add(task)
        task.add_done_callback(self._start_writes.discard)
        self._start_of[fx.session_id] = task  # its finish waits for it (the late stop-reason note)
        task.add_done_callback(functools.partial(self._start_done, fx.session_id))

    def _start_done(self, session_id: str, task: asyncio.Task[None]) -> None:
        if self._start_of.get(session_id) is task:
            del self._start_of[session_id]

    async def _store_start(
        self, doc: codec.ChargeSession, request_id: str, held: asyncio.Future[bool]
    ) -> None:
        sid = doc.session_id
        delay_s = 0.2
        while not held.done():
            # A finish begun meanwhile goes into the document, so a restart closes the session.
            doc.stop_reason = self._stopping.get(sid, "")
            try:
                with self.urgent.busy():
                    stored = await self.io(self._create_start, doc)
            except StoreError as exc:
                # The relay stays off meanwhile; the session's finish (if it comes first) releases it.
                log.warning("session %s not stored yet (%s); retrying", sid, exc)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)
                continue
            if not held.done():
                held.set_result(stored)
        self.unstored.pop(sid, None)
        late = self._stopping.pop(sid, "")
        if held.result() and late and late != doc.stop_reason:  # begun while the document was written
            try:
                await self.io(self._note_stop, sid, late)
            except StoreError as exc:
                log.warning("session %s: its stop reason not written (%s)", sid, exc)
        await self.urgent.quiet()  # the answer is not on the way to any relay: after the burst's starts
        await self.io(self.answer, request_id, True, "", sid)
        log.info("session %s started on %s for %s", doc.session_id, doc.plug_mac, doc.user_id)

    def _create_start(self, doc: codec.ChargeSession) -> bool:
        """Create the ACTIVE document (blocking; off the loop). False if the relay must stay off."""
        if self.store.create_session(doc):
            return True
        existing = self.store.get_session(doc.session_id)
        if existing is not None and existing.status == codec.ChargeSession.STATUS_COMPLETED:
            return False  # finished (and billed) before its start was stored: never switch it on
        if existing is None or existing.user_id != doc.user_id:
            log.error("session %s already has a document; not overwriting it", doc.session_id)
            return False
        return True

    def _note_stop(self, session_id: str, reason: str) -> None:
        doc = self.store.get_session(session_id)
        if doc is not None and doc.status == codec.ChargeSession.STATUS_ACTIVE and doc.stop_reason != reason:
            doc.stop_reason = reason
            self.store.put_session(doc)

    async def starts_done(self, timeout_s: float = 30.0) -> None:
        """Wait for the start documents in flight (stop, tests)."""
        if self._start_writes:
            await asyncio.wait(set(self._start_writes), timeout=timeout_s)

    def progress(self, plug: HubPlug, fx: m.SessionUpdated) -> None:
        """Write a live session's energy and running cost into its document when the last write is
        ``progress_interval_s`` old (the first interval counts from the session's first update)."""
        sess = plug.state.session
        if (
            fx.session_id not in self.tracked
            or sess is None
            or sess.session_id != fx.session_id
            or sess.stop_reason
            or fx.status is m.Status.FINISHING
        ):
            return
        now = self.now_ms()
        last = self._progress_at.setdefault(fx.session_id, now)
        if now - last < self.progress_ms:
            return
        self._progress_at[fx.session_id] = now  # also when the write fails: retried an interval later
        doc = codec.ChargeSession(
            session_id=sess.session_id,
            user_id=sess.user_id,
            plug_mac=fx.mac,
            site_id=plug.site_id,
            status=codec.ChargeSession.STATUS_ACTIVE,
            started_at_ms=sess.started_at_ms,
            start_counter_mwh=sess.start_counter_mwh,
            energy_mwh=fx.energy_mwh,
            idle_s=fx.idle_ms // 1000,
            cost=codec.Money(amount_minor=fx.cost_minor, currency=sess.tariff.currency),
            tariff_id=sess.tariff.tariff_id,
            request_id=sess.request_id,
        )
        try:
            self.store.put_session(doc)
        except StoreError as exc:
            log.warning("progress of session %s not written (%s); next interval", sess.session_id, exc)
            return
        self.metrics.inc("session_progress_writes_total")

    def finishing(self, plug: HubPlug) -> None:
        """The machine began finishing the session (relay commanded off): say so in its document, so a
        hub restarted from an older checkpoint closes the session instead of switching the relay on."""
        sess = plug.state.session
        if sess is None or not sess.stop_reason:
            return
        if self.stops is not None:  # on local disk first: the store may be down, and the hub killed next
            self.stops.record(sess.session_id, str(sess.stop_reason))
        if sess.session_id in self.unstored:  # its start document is being written: it carries this
            self._stopping[sess.session_id] = str(sess.stop_reason)
            return
        if self.defer_finishes:
            sid = sess.session_id
            task = self._spawn(self._note_async(sid, str(sess.stop_reason)))
            self._notes[sid] = task
            task.add_done_callback(functools.partial(self._note_done, sid))
            return
        self._note_stop(sess.session_id, str(sess.stop_reason))

    def _note_done(self, session_id: str, task: asyncio.Task[None]) -> None:
        if self._notes.get(session_id) is task:
            del self._notes[session_id]

    async def _note_async(self, session_id: str, reason: str) -> None:
        """:meth:`_note_stop` on the request threads, retried while the store fails, until it is written
        or the session's finish is decided (its COMPLETED document then says more than the note)."""
        delay_s = 0.2
        while True:
            try:
                await self.io(self._note_stop, session_id, reason)
                return
            except StoreError as exc:
                if session_id in self.pending or self._closing:
                    return
                log.warning("session %s: its stop reason not written yet (%s); retrying", session_id, exc)
            self._note_backoff.add(session_id)
            try:
                await asyncio.sleep(delay_s)
            finally:
                self._note_backoff.discard(session_id)
            delay_s = min(delay_s * 2, 5.0)
            if session_id in self.pending or self._closing:
                return

    def stop_notes(self) -> None:
        """The hub is stopping: a stop-reason note the store keeps refusing is not retried any more (the
        stop could otherwise wait the whole ``finishes_done`` bound for it). The session's stop reason is
        in the machine's state, which the stopping hub's last checkpoint holds; the note only speaks to a
        restart from an older checkpoint. A note whose write is in flight still completes."""
        self._closing = True
        for sid in list(self._note_backoff):
            task = self._notes.get(sid)
            if task is not None:
                task.cancel()

    def finished(self, plug: HubPlug, rec: m.SessionRecord) -> None:
        """Bill a finished session (see the module docstring)."""
        self._progress_at.pop(rec.session_id, None)
        self.tracked.discard(rec.session_id)
        if rec.session_id in self.billed_before:
            self.billed_before.discard(rec.session_id)
            if self.stops is not None:
                self.stops.done(rec.session_id)
            log.info(
                "session %s was completed and billed before the restart; not billing it again", rec.session_id
            )
            return
        if self.defer_finishes:
            # Pending (so checkpointed) now, from the balance known now; decided and written off the loop.
            self.pending[rec.session_id] = self._bill(plug.site_id, rec)
            self._owned.add(rec.session_id)
            self._spawn(self._finish_async(plug.site_id, rec))
            return
        with contextlib.suppress(StoreError):  # if the store is down, the last known balance bounds it
            self.balances.read(rec.user_id, rec.tariff.currency)
        finish = self.pending[rec.session_id] = self._bill(plug.site_id, rec)
        self._announce(plug.site_id, rec, finish[0])
        self.write(rec.session_id)

    def _bill(self, site_id: str, rec: m.SessionRecord) -> Finish:
        """The COMPLETED document and the debit of a finished session, from the balance known now."""
        currency = rec.tariff.currency
        cost = rec.cost_minor
        available = max(0, self.balances.available(rec.user_id, currency, rec.session_id))
        debit = min(cost, available)
        reviews = [rec.review] if rec.review else []
        if debit < cost:
            reviews.append(f"cost {cost} above the available balance {available}; debited {debit}")
        doc = codec.ChargeSession(
            session_id=rec.session_id,
            user_id=rec.user_id,
            plug_mac=rec.mac,
            site_id=site_id,
            status=codec.ChargeSession.STATUS_COMPLETED,
            started_at_ms=rec.started_at_ms,
            ended_at_ms=rec.ended_at_ms,
            start_counter_mwh=rec.start_counter_mwh,
            stop_counter_mwh=rec.stop_counter_mwh,
            energy_mwh=rec.energy_mwh,
            idle_s=rec.idle_ms // 1000,
            cost=codec.Money(amount_minor=debit, currency=currency),
            stop_reason=str(rec.stop_reason),
            tariff_id=rec.tariff.tariff_id,
            request_id=rec.request_id,
            review_reason="; ".join(reviews),
        )
        entry = codec.LedgerEntry(
            entry_id=rec.session_id,
            user_id=rec.user_id,
            kind=codec.LedgerEntry.KIND_SESSION_DEBIT,
            amount=codec.Money(amount_minor=-debit, currency=currency),
            reference=rec.mac,
            description=f"{rec.energy_mwh / 1e6:.3f} kWh on {rec.mac}",
            created_at_ms=rec.ended_at_ms,
        )
        return doc, entry

    def _announce(self, site_id: str, rec: m.SessionRecord, doc: codec.ChargeSession) -> None:
        """The review alert, the time-series event, the metric and the log line of a decided finish."""
        currency = rec.tariff.currency
        debit = doc.cost.amount_minor
        if doc.review_reason:
            self.metrics.inc("sessions_needs_review_total")
            self.alerts.raise_alert(
                AlertKind.NEEDS_REVIEW, rec.session_id, doc.review_reason, self.now_ms(), site_id=site_id
            )
        self.timeseries().add_session_event(
            SessionEvent(
                rec.ended_at_ms,
                site_id,
                rec.mac,
                rec.session_id,
                rec.user_id,
                "finished",
                rec.energy_mwh,
                debit,
                currency,
                str(rec.stop_reason),
            )
        )
        self.metrics.inc("sessions_finished_total", stop_reason=str(rec.stop_reason))
        log.info(
            "session %s finished (%s): %.3f kWh, %d %s",
            rec.session_id,
            rec.stop_reason,
            rec.energy_mwh / 1e6,
            debit,
            currency,
        )

    def write(self, session_id: str) -> bool:
        """Write one pending finish (document + debit, one transaction); False if the store failed."""
        doc, entry = self.pending[session_id]
        try:
            written = self._commit(session_id, doc, entry)
        except StoreError as exc:
            self._refused(session_id, exc)
            return False
        self._written(session_id, entry, written)
        return written

    def _commit(self, session_id: str, doc: codec.ChargeSession, entry: codec.LedgerEntry | None) -> bool:
        """The finish transaction (blocking). ``doc`` is copied, never changed: off the loop it is the
        pending finish the loop may be checkpointing meanwhile."""
        final = codec.ChargeSession()
        final.CopyFrom(doc)
        existing = self.store.get_session(session_id)
        if existing is not None and existing.started_at_ms:
            final.started_at_ms = existing.started_at_ms
            final.start_counter_mwh = existing.start_counter_mwh
        return self.store.finish_session(final, entry)

    def _refused(self, session_id: str, exc: StoreError) -> None:
        self.metrics.inc("finish_retries_total")
        log.warning("session %s not written yet (%s); retrying every tick", session_id, exc)

    def _written(self, session_id: str, entry: codec.LedgerEntry | None, written: bool) -> None:
        """A finish transaction came back (on the loop): the finish is no longer pending."""
        finish = self.pending.pop(session_id, None)
        if finish is not None:
            self.settled(session_id, finish[0].plug_mac)
        if self.stops is not None:
            self.stops.done(session_id)
        if not written:
            log.info("session %s was already completed and billed; not billing again", session_id)
        elif entry is not None:
            self.balances.debited(entry)
            if entry.amount.amount_minor:
                self.on_debit(entry.user_id)

    def retry(self) -> None:
        if self.defer_finishes:
            if self._sweep is None or self._sweep.done():
                todo = [sid for sid in self.pending if sid not in self._owned]
                if todo:
                    self._sweep = self._spawn(self._retry_async(todo))
            return
        for session_id in list(self.pending):
            if not self.write(session_id):
                return  # the store is still down: try again next tick

    # ------------------------------------------------------------------ the stop path off the loop

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._finishes.add(task)
        task.add_done_callback(self._finishes.discard)
        return task

    async def _finish_async(self, site_id: str, rec: m.SessionRecord) -> None:
        """A finished session, billed off the loop: the balance read on the request threads, the bill
        decided on the loop from it (never from a read older than a debit the hub applied meanwhile),
        then the finish transaction; a refused write stays pending for the tick's retry sweep."""
        sid = rec.session_id
        key = (rec.user_id, rec.tariff.currency)
        try:
            async with self._turns.turn(key):  # one balance: the next debit sees the one before
                before = self.balances.known.get(key)
                balance: int | None = None
                with contextlib.suppress(StoreError):  # the store is down: the last known balance bounds it
                    balance = await self.io(self.balances.ledger.balance, *key)
                if balance is not None and self.balances.known.get(key) == before:
                    self.balances.learned(key, balance)
                if sid not in self.pending:
                    return
                finish = self.pending[sid] = self._bill(site_id, rec)
                self._announce(site_id, rec, finish[0])
                await self._write_async(sid)
        finally:
            self._owned.discard(sid)

    async def _write_async(self, session_id: str) -> bool:
        """:meth:`write` with the transaction on the request threads, after the session's own stop-reason
        note (an ACTIVE document written over the COMPLETED one would reopen it at a restart)."""
        for writing in (self._start_of.get(session_id), self._notes.get(session_id)):
            if writing is not None:  # its start document (and the stop reason written after it)
                await asyncio.wait([writing])
        if session_id not in self.pending:
            return True
        doc, entry = self.pending[session_id]
        try:
            written = await self.io(self._commit, session_id, doc, entry)
        except StoreError as exc:
            self._refused(session_id, exc)
            return False
        self._written(session_id, entry, written)
        return True

    async def _retry_async(self, todo: list[str]) -> None:
        """The tick's retry sweep: the refused finishes one after the other, stopping at the first
        failure (the store is still down: the next tick sweeps again)."""
        for sid in todo:
            if sid not in self.pending or sid in self._owned:
                continue
            self._owned.add(sid)
            try:
                ok = await self._write_async(sid)
            finally:
                self._owned.discard(sid)
            if not ok:
                return

    async def finishes_done(self, timeout_s: float = 30.0) -> None:
        """Wait for the stop path's store work in flight (stop, tests); stop-reason notes still retrying
        after that are cancelled (their finishes are pending, and checkpointed)."""
        if self._finishes:
            await asyncio.wait(set(self._finishes), timeout=timeout_s)
        for task in list(self._notes.values()):
            task.cancel()

    def close_debited(self, doc: codec.ChargeSession, debit: codec.LedgerEntry) -> None:
        """An ACTIVE document whose debit is already in the ledger: close it, never resume it."""
        closed = codec.ChargeSession()
        closed.CopyFrom(doc)
        closed.status = codec.ChargeSession.STATUS_COMPLETED
        closed.cost.CopyFrom(
            codec.Money(amount_minor=-debit.amount.amount_minor, currency=debit.amount.currency)
        )
        closed.ended_at_ms = closed.ended_at_ms or debit.created_at_ms
        self.store.finish_session(closed, None)
        log.warning("session %s was debited but still ACTIVE; closed it", doc.session_id)
