"""The hub: one state machine per plug in memory, fed by telemetry and user requests, acting through ports.

Ports: a :class:`~chargectl.services.adapters.bus.Bus` (telemetry in, signed relay commands out, dead
letters), a :class:`~chargectl.services.adapters.store.Store` (requests, plug states, plug bindings,
sessions, ledger, sites, checkpoint), a :class:`~chargectl.services.adapters.timeseries.TimeSeries`, the
site command keys and the telemetry keys (:mod:`chargectl.services.trust`). The same class runs
embedded (memory bus, SQLite) and distributed (Pub/Sub, Firestore, InfluxDB).

``Hub`` keeps the lifecycle, the loops and the path of an event to a machine; the rest lives in modules
named for what they do:

- :mod:`.ingest` — verify, decode and dedupe telemetry messages; the site's ``Site.shard`` decides.
- :mod:`.registry` — which site owns which plug (``foreign_plug``, ``plug_limit``).
- :mod:`.intake` — the bounds every reading must pass before a machine sees it.
- :mod:`.requests` — charge requests in, answers out.
- :mod:`.sessions` — session documents, shared per-currency balances, the one-transaction finish.
- :mod:`.effects` — relay commands out.
- :mod:`.mirror` — plug-state documents.
- :mod:`.checkpoint` — the hub's state in the store.

Reliability:
- Telemetry is acked only after its readings reached the machines; a batch is recorded in the
  per-site sequence window then, so redeliveries and agent replays are no-ops.
- Undecodable, unverified, revoked or wrong-shard messages are published to the dead-letter topic with
  the reason and counted; if that publish fails the message is nacked, never acked silently. Readings of
  plugs bound to another site are refused and a copy of the message is dead-lettered (``foreign_plug``).
- A finished session's COMPLETED document and its debit (entry id = session id) are written in one
  store transaction, retried until written, so it is billed exactly once.
- The checkpoint is written periodically (its size grows with the plugs, so not per session); at start
  the hub reconciles it with the store: sessions started after the last checkpoint are resumed, and
  sessions finished, already debited or whose finish had begun (the document's ``stop_reason`` is set
  when the relay is commanded off) are closed, never resumed with the relay on.
- An exception while handling one plug's event faults that plug (relay off, alert); one escaping a loop
  pass is counted and shown by /healthz until a pass succeeds. Neither stops the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import EllipsisType
from typing import Any

from chargectl.common import codec, sdnotify
from chargectl.common.alerts import AlertBook, AlertKind, Severity
from chargectl.common.clock import Clock, SystemClock
from chargectl.common.errors import ChargectlError, StoreError, TransportError
from chargectl.common.keys import Keyring
from chargectl.common.readings import Reading
from chargectl.common.runner import run_until_signalled
from chargectl.common.topics import DEAD_LETTER_TOPIC, TELEMETRY_TOPIC, telemetry_subscription
from chargectl.services.adapters.bus import Bus, BusMessage, SubscriptionHandle
from chargectl.services.adapters.store import Store
from chargectl.services.adapters.timeseries import TimeSeries
from chargectl.services.alerting import instrument_hub, raise_machine_alert, resolve_on_state
from chargectl.services.hub import checkpoint as ckpt
from chargectl.services.hub import machine as m
from chargectl.services.hub.billing import Tariff
from chargectl.services.hub.effects import CommandKeys, CommandSender
from chargectl.services.hub.gc_tuning import GcTuning
from chargectl.services.hub.health import HealthServer, Metrics, Route
from chargectl.services.hub.ingest import Ingest, Rejected, Skipped
from chargectl.services.hub.intake import RefusalLog, batch_in_bounds, check_reading, run_in_bounds
from chargectl.services.hub.leases import Leases
from chargectl.services.hub.mirror import Job, Mirror, Writer, plug_state_doc
from chargectl.services.hub.params import PlugParams
from chargectl.services.hub.registry import HubPlug, PlugRefusal, PlugRegistry
from chargectl.services.hub.requests import Requests
from chargectl.services.hub.sessions import Balances, Sessions, TopupCheck
from chargectl.services.hub.settings import HubSettings
from chargectl.services.hub.stops import StopJournal
from chargectl.services.hub.timers import TimerWheel
from chargectl.services.payments.ledger import Ledger
from chargectl.services.trust import TelemetryKeys, telemetry_keyring

__all__ = ["CommandKeys", "Hub", "HubPorts", "TelemetryKeys", "tariff_from_document"]

_BY_TS = operator.attrgetter("ts_ms")
_IDLE = frozenset({m.Status.AVAILABLE, m.Status.OFFLINE})  # no session, nothing the operator set

log = logging.getLogger("chargectl.hub")

_Plug = HubPlug  # the name older callers used
BINDINGS_REREAD_S = 3600.0  # plug bindings are re-read at least this often, whatever the sites say
SHARD_REREAD_MIN_S = 1.0  # a request for a plug this hub does not know re-reads bindings at most this often
WRITER_DRAIN_S = 10.0  # a stopping hub waits at most this long for its store writer's queue
BALANCE_READS_IN_FLIGHT = 8  # due balance reads on the request threads at once (half of them: requests)


def tariff_from_document(doc: codec.Tariff) -> Tariff:
    """The billing tariff of a ``Tariff`` frontend document."""
    return Tariff(
        tariff_id=doc.tariff_id or "site",
        currency=(doc.currency or "gbp").lower(),
        price_per_kwh_minor=Decimal(doc.price_per_kwh_minor),
        session_fee_minor=doc.session_fee_minor,
        idle_price_per_minute_minor=Decimal(doc.idle_price_per_minute_minor),
        idle_grace_s=doc.idle_grace_s,
        energy_step_wh=doc.energy_step_wh,
        time_step_s=doc.time_step_s,
        min_start_balance_minor=doc.min_start_balance_minor,
    )


@dataclass
class HubPorts:
    bus: Bus
    store: Store
    timeseries: TimeSeries
    command_keys: CommandKeys
    telemetry_keys: TelemetryKeys = telemetry_keyring  # the sites' agent keys valid at a time
    topup: TopupCheck | None = None  # the auto top-up check after a debit (payments), when configured
    stops: StopJournal | None = None  # the local stop journal (services/hub/stops.py), when given a disk


class Hub:
    """See the module docstring. ``serve()`` runs it; ``run_once()`` is one pass of every loop (tests)."""

    CHECKPOINT = "hub"

    def __init__(self, settings: HubSettings, ports: HubPorts, clock: Clock | None = None) -> None:
        self.settings = settings
        self.ports = ports
        self.clock = clock or SystemClock()
        self._now_memo: tuple[float, int] = (float("nan"), 0)  # the last hub time and its ms (_now_ms)
        self.store = ports.store
        self.ledger = Ledger(ports.store)
        self.plugs: dict[str, HubPlug] = {}
        self.timers = TimerWheel()  # plugs by the second their next timer is due
        self.checkpoint_parts = ckpt.PartTracker()  # checkpoint parts with a plug changed since the last
        self.ingest = Ingest(
            Keyring(), shard=settings.shard, max_clock_skew_ms=round(settings.max_clock_skew_s * 1000)
        )
        self.registry = PlugRegistry(  # bindings held by the entries of ``plugs`` where they agree
            ports.store, settings.max_new_plugs_per_batch, settings.max_plugs_per_site, self.plugs
        )
        self.metrics = Metrics()
        self.alerts = AlertBook()  # open alerts; sinks and the console read them
        self.http_routes: dict[str, Route] = {}  # path prefix -> handler, served beside /healthz
        self.commands = CommandSender(
            ports.bus, ports.command_keys, self.metrics, self.clock, settings.command_lifetime_s
        )
        self.leases = Leases(self.commands, self.metrics)
        self.mirror = Mirror(
            ports.store,
            self.metrics,
            settings.plug_class,
            settings.plug_state_min_interval_s,
            settings.plug_state_settle_s,
            settings.plug_state_transitional_s,
            settings.plug_state_detail_s,
        )
        # Users with a live session (kept by _apply): balance sharing walks these, not every plug.
        self.money = Balances(
            self.ledger, self._now_ms, settings.balance_refresh_s, settings.balance_max_stale_s
        )
        self._ledger_cursor: int | None = None  # the store's ledger position, when it can tell changes
        self.requests = Requests(
            ports.store,
            self.clock,
            self.metrics,
            self.money,
            self.plugs,
            self._apply_safely,
            self.tariff_for,
            settings.request_max_age_s,
            settings.max_clock_skew_s,
            self._other_shards_plug,
            lambda session_id: self.sessions.tracked.add(session_id),
            settings.requests_per_user_per_minute,
        )
        self.sessions = Sessions(
            ports.store,
            lambda: self.ports.timeseries,
            self.money,
            self.metrics,
            self.alerts,
            self.requests.answer,
            self._now_ms,
            settings.progress_interval_s,
            self._after_debit,
        )
        self.requests.sessions = self.sessions  # pushed requests' starts: stored off the loop, then "on"
        self.requests.stop_recovering = self._stop_recovering
        self.requests.bound = lambda mac: self.registry.owner(mac) is not None
        self.sessions.io = self.requests.io
        self.sessions.stops = ports.stops
        self.sessions.settled = self._settled
        self.commands.holds = self.sessions.unstored
        self.commands.on_its_way = self.sessions.urgent.enter  # answers wait for the burst's "on"s too
        self._pushed: set[asyncio.Task[None]] = set()  # pushed requests being handled
        self._topups: set[asyncio.Task[None]] = set()
        self._balance_reads: set[asyncio.Task[None]] = set()  # due balance reads on the request threads
        self.balance_reads_off_loop = False  # set by serve(): the tick's balance reads run off the loop
        self._params_by_class: dict[str, PlugParams] = {}
        self._site_tariffs: dict[str, Tariff] = {}
        self._default_tariff = settings.tariff.tariff()
        self._subscription: SubscriptionHandle | None = None
        self._health: HealthServer | None = None
        self._stop = asyncio.Event()
        self._recover: dict[str, codec.ChargeSession] = {}  # sessions to resume once their plug reports
        self._loop_errors: dict[str, str] = {}  # loop name -> the exception of its last failed pass
        self._refusals = RefusalLog()
        self._checkpoint_due = False
        self._checkpoint_in_flight = False  # a periodic checkpoint handed to the writer thread
        self._last_checkpoint = 0.0
        self._last_trust = 0.0
        self._bindings_seen: tuple[int, int] | None = None  # (sites, newest Site.updated_at_ms) last read
        self._last_bindings = 0.0
        self._started = False
        self.gc = GcTuning(settings.gc_freeze_interval_s, settings.gc_gen0_threshold)  # serve() applies it
        self._init_metrics()

    @property
    def balances(self) -> dict[tuple[str, str], int]:
        """Known ledger balances, ``(user, currency) -> minor units``."""
        return self.money.known

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load the checkpoint and the ledger, reconcile with the store, subscribe to telemetry."""
        self.refresh_trust(force=True)
        self._ledger_changes()  # the position now: what came before is in the balances loaded next
        self.money.load()
        self._load_checkpoint()
        for mac, plug in self.plugs.items():  # plugs known from before bindings existed keep their site
            plug.site_id = self.registry.bind(mac, plug.site_id, self._now_ms())
            self.registry.settle(plug)
        self._reconcile()
        bus = self.ports.bus
        await bus.ensure_topic(TELEMETRY_TOPIC)
        await bus.ensure_topic(DEAD_LETTER_TOPIC)
        sub = telemetry_subscription(self.settings.shard)
        await bus.ensure_subscription(sub, TELEMETRY_TOPIC, dead_letter_topic=DEAD_LETTER_TOPIC)
        self._subscription = await bus.subscribe(
            sub, self.handle_message, max_messages=self.settings.max_messages
        )
        self._started = True
        log.info(
            "hub shard %d started: %d plugs, %d users with a balance",
            self.settings.shard,
            len(self.plugs),
            len({user for user, _ in self.balances}),
        )

    def _after_debit(self, user_id: str) -> None:
        """A session debit was written: run the auto top-up check off the event loop (it may call
        Stripe). Its failure is logged and counted; the debit stands either way."""
        check = self.ports.topup
        if check is None:
            return

        async def run() -> None:
            try:
                outcome = await asyncio.to_thread(check, user_id)
            except Exception as exc:
                self.metrics.inc("topup_checks_total", outcome="error")
                log.warning("auto top-up check of %s failed: %s", user_id, exc)
                return
            self.metrics.inc("topup_checks_total", outcome="done")
            log.info("auto top-up check of %s: %s", user_id, outcome)

        try:
            task = asyncio.get_running_loop().create_task(run())
        except RuntimeError:  # no loop (a synchronous caller): the app's periodic sweep catches it
            log.warning("auto top-up check of %s skipped: no event loop", user_id)
            return
        self._topups.add(task)
        task.add_done_callback(self._topups.discard)

    async def topups_done(self, timeout_s: float = 60.0) -> None:
        """Wait for the auto top-up checks in flight (stop, tests)."""
        if self._topups:
            await asyncio.wait(set(self._topups), timeout=timeout_s)

    def start_writer(self) -> None:
        """Write plug-state documents and periodic checkpoints on a background thread from now on (the
        serving hub; tests)."""
        if self.mirror.writer is not None:
            return
        loop = asyncio.get_running_loop()

        def failed(mac: str) -> None:  # the writer's thread: mark the plug again on the loop
            with contextlib.suppress(RuntimeError):  # the loop is closed: the hub has stopped
                loop.call_soon_threadsafe(self._mirror_failed, mac)

        writer = Writer(self.store.put_plug_state, self.metrics, failed)
        writer.start()
        self.mirror.writer = writer

    def _mirror_failed(self, mac: str) -> None:
        plug = self.plugs.get(mac)
        if plug is not None:
            self.mirror.retry(plug, self._now_ms())

    async def drain_writer(self, timeout_s: float = WRITER_DRAIN_S) -> int:
        """Write what is queued for the store writer (at most ``timeout_s``), stop it; returns the writes
        left undone. Plug states and checkpoints are written inline from now on."""
        writer, self.mirror.writer = self.mirror.writer, None
        if writer is None:
            return 0
        return await asyncio.to_thread(writer.drain, timeout_s)

    async def stop(self) -> None:
        self.sessions.urgent.close()  # answers held behind starts are written now, not after their bound
        await self.topups_done(timeout_s=30.0)
        if self._pushed:
            await asyncio.wait(set(self._pushed), timeout=30.0)
        await self.sessions.starts_done(timeout_s=30.0)
        self.sessions.stop_notes()  # a refused stop-reason note must not hold the stop (see there)
        await self.sessions.finishes_done(timeout_s=30.0)
        self.sessions.defer_finishes = False  # a finish still pending is in the last checkpoint
        await self.balance_reads_done(timeout_s=30.0)
        await self.drain_writer()
        self.requests.close()
        if self._subscription is not None:
            await self._subscription.stop()
            self._subscription = None
        if self._started:
            self.checkpoint()
        self.ports.timeseries.flush(timeout_s=5)
        if self.ports.stops is not None:
            self.ports.stops.close()
        if self._health is not None:
            await self._health.stop()
        self._started = False
        self.sessions.urgent.reopen()
        self.gc.restore()

    async def serve(self, health: bool = True) -> None:
        """Run until :meth:`request_stop` (or cancellation)."""
        await self.start()
        if health:
            self._health = HealthServer(
                self.metrics, self.problems, self.settings.health_host, self.settings.health_port
            )
            for prefix, route in self.http_routes.items():
                self._health.mount(prefix, route)
            await self._health.start()
        self.start_writer()
        self.balance_reads_off_loop = True
        self.sessions.defer_finishes = True  # the stop path's store calls on the request threads
        self.gc.apply(self.clock.monotonic())  # the plug map and checkpoint are loaded: freeze them
        sdnotify.ready()
        poll_s = self.settings.request_poll_s
        unwatch = self._watch_requests()
        if unwatch is not None:
            poll_s = max(poll_s, self.settings.request_watch_poll_s)  # the listener does the work
        try:
            loops = [
                self._loop(self.tick, self.settings.tick_interval_s),
                self._loop(self.poll_requests, poll_s),
            ]
            tasks = [asyncio.create_task(c) for c in loops]
            await self._stop.wait()
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
        finally:
            if unwatch is not None:
                unwatch()
            await self.stop()

    def _watch_requests(self) -> Callable[[], None] | None:
        """Listen for new requests when the store can push them (Firestore ``on_snapshot``)."""
        watch = getattr(self.store, "watch_requests", None)
        if watch is None or not self.settings.request_watch:
            return None
        loop = asyncio.get_running_loop()

        def on_request(req: codec.ChargeRequest) -> None:  # the listener's thread
            loop.call_soon_threadsafe(self._handle_pushed, req)

        unwatch: Callable[[], None] = watch(on_request)
        return unwatch

    def _handle_pushed(self, req: codec.ChargeRequest) -> None:
        """A pushed request is handled concurrently with the others (store calls off the loop)."""
        task = asyncio.get_running_loop().create_task(self._handle_pushed_safely(req))
        self._pushed.add(task)
        task.add_done_callback(self._pushed.discard)

    async def _handle_pushed_safely(self, req: codec.ChargeRequest) -> None:
        try:
            await self.requests.handle_async(req)
            self._checkpoint_if_due()
        except ChargectlError as exc:
            log.warning("request %s not handled yet (%s); it stays pending", req.request_id, exc)
        except Exception:
            log.exception("handling request %s raised; it stays pending", req.request_id)
            self.metrics.inc("loop_errors_total", loop="watch_requests", kind="bug")

    def request_stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Blocking entry for the CLI: serve until SIGINT/SIGTERM."""
        run_until_signalled(self.serve, self.request_stop)

    async def run_once(self) -> None:
        """One pass: answer pending requests, tick every machine, checkpoint if due."""
        await self.poll_requests()
        await self.tick()

    async def _loop(self, fn: Callable[[], Any], interval_s: float) -> None:
        name = getattr(fn, "__name__", "loop")
        while not self._stop.is_set():
            await self.run_pass(fn, name)
            if fn == self.tick:  # the watchdog follows the tick loop: if it hangs, systemd restarts the hub
                sdnotify.watchdog()
            await self.clock.sleep(interval_s)

    async def run_pass(self, fn: Callable[[], Any], name: str) -> None:
        """One pass of a loop: a failure is counted, shown by /healthz until a pass succeeds, never fatal."""
        try:
            await fn()
        except ChargectlError as exc:
            log.warning("%s failed: %s", name, exc)
            self.metrics.inc("loop_errors_total", loop=name, kind="expected")
        except Exception as exc:  # a bug: keep the loop alive, make it visible
            log.exception("%s raised; the loop goes on", name)
            self.metrics.inc("loop_errors_total", loop=name, kind="bug")
            self._loop_errors[name] = f"{type(exc).__name__}: {exc}"[:300]
            self.alerts.raise_alert(
                AlertKind.HUB_ERROR,
                name,
                f"{name} raised {type(exc).__name__}: {exc}",
                self._now_ms(),
                severity=Severity.CRITICAL,
            )
        else:
            self._loop_errors.pop(name, None)

    def problems(self) -> list[str]:
        out = [f"{name} loop failed: {err}" for name, err in sorted(self._loop_errors.items())]
        if self._subscription is not None and not self._subscription.running:
            out.append(f"telemetry subscriber stopped: {self._subscription.error}")
        if not self._started:
            out.append("hub not started")
        return out

    # ------------------------------------------------------------------ time

    def now(self) -> float:
        return self.clock.now()

    def _now_ms(self) -> int:
        # One int per hub time, not one per call: the plugs marked at one time (a site's batch, a tick)
        # share it in what they keep (the mirror's pending marks), as the machines share theirs.
        now = self.clock.now()
        if now != self._now_memo[0]:
            self._now_memo = (now, round(now * 1000))
        return self._now_memo[1]

    # ------------------------------------------------------------------ trust and tariffs

    def refresh_trust(self, force: bool = False) -> None:
        """Re-read the sites (keys, revocations, shards, tariffs) and the plug bindings when due."""
        mono = self.clock.monotonic()
        if not force and mono - self._last_trust < self.settings.trust_refresh_s:
            return
        self._last_trust = mono
        sites = self.store.list_sites()
        self.commands.sites = {s.site_id: s for s in sites}
        self.ingest.site_shards = {s.site_id: s.shard for s in sites}
        self.ingest.keyring = self.ports.telemetry_keys(sites, self._now_ms())
        self.ingest.revoked_sites = {s.site_id for s in sites if s.status == codec.Site.STATUS_REVOKED}
        self._site_tariffs = {
            s.site_id: tariff_from_document(s.tariff) for s in sites if s.HasField("tariff")
        }
        # Bindings change outside the hub only by `chargectl plugs assign/release`, which also touch the
        # sites' documents: re-read them when a site changed (and hourly), not every refresh.
        seen = (len(sites), max((s.updated_at_ms for s in sites), default=0))
        if force or seen != self._bindings_seen or mono - self._last_bindings >= BINDINGS_REREAD_S:
            self._bindings_seen = seen
            self._last_bindings = mono
            self._reread_bindings()

    def _reread_bindings(self) -> None:
        for mac, site_id in self.registry.refresh().items():  # an operator moved a plug
            plug = self.plugs.get(mac)
            if plug is not None and plug.site_id != site_id:
                log.info("plug %s assigned from site %s to %s", mac, plug.site_id, site_id)
                plug.site_id = site_id
                self.registry.settle(plug)
                self.mirror.mark(plug, self._now_ms())
                self.checkpoint_parts.touch(mac)

    def _other_shards_plug(self, mac: str) -> bool:
        """Is ``mac`` bound to a site another shard's hub serves (its ``Site.shard``)?

        On a miss the sites and bindings are re-read, at most once a second (a flood of requests for
        made-up plugs costs no more), so a plug another hub bound a moment ago is not refused here as
        ``unknown_plug``. A plug nobody has bound is nobody else's."""

        def owner_shard() -> int | None:
            plug = self.plugs.get(mac)
            site = plug.site_id if plug is not None else self.registry.owner(mac)
            return None if site is None else self.ingest.site_shards.get(site)

        shard = owner_shard()
        if shard is None and self.clock.monotonic() - self._last_trust >= SHARD_REREAD_MIN_S:
            self.refresh_trust(force=True)
            shard = owner_shard()
        return shard is not None and shard != self.settings.shard

    def tariff_for(self, site_id: str) -> Tariff:
        return self._site_tariffs.get(site_id, self._default_tariff)

    def _params(self, mac: str) -> PlugParams:
        cls = self.settings.plug_class(mac)
        params = self._params_by_class.get(cls)
        if params is None:
            params = self._params_by_class[cls] = self.settings.params(mac)
        return params

    # ------------------------------------------------------------------ telemetry

    async def handle_message(self, msg: BusMessage) -> bool:
        """Bus handler for the telemetry subscription; True acks."""
        verdict = self.ingest.accept(msg.data, msg.attributes, self._now_ms())
        if isinstance(verdict, Skipped):
            self.metrics.inc("skipped_total", reason=verdict.reason)
            return True
        if isinstance(verdict, Rejected):
            return await self._dead_letter(msg, verdict)
        foreign: list[str] = []
        try:
            if verdict.batch is not None:
                foreign = self.process_batch(verdict.batch)
                # Results after the readings: a sample taken before the relay switched must not
                # contradict a result the hub has just taken as confirmation.
                foreign += [o.plug_mac for o in verdict.batch.results if not self.process_outcome(o)]
            elif verdict.outcome is not None and not self.process_outcome(verdict.outcome):
                foreign = [verdict.outcome.plug_mac]
        except StoreError as exc:
            log.warning("store unavailable while processing telemetry (%s); will be redelivered", exc)
            return False
        self.ingest.commit(verdict)
        if foreign:
            # The rest was processed; a copy goes to the dead letters so the refusal can be inspected.
            detail = f"plugs bound to another site: {', '.join(sorted(foreign)[:20])}"
            await self._dead_letter(msg, Rejected(PlugRefusal.FOREIGN_PLUG, detail, verdict.site_id))
        self._checkpoint_if_due()
        return True

    async def _dead_letter(self, msg: BusMessage, verdict: Rejected) -> bool:
        attrs = dict(msg.attributes)
        attrs.update(
            {
                "reason": str(verdict.reason),
                "detail": verdict.detail[:500],
                "original_message_id": msg.message_id,
            }
        )
        try:
            await self.ports.bus.publish(DEAD_LETTER_TOPIC, msg.data, attrs)
        except TransportError as exc:
            log.warning("cannot dead-letter message %s (%s); leaving it unacked", msg.message_id, exc)
            return False
        self.metrics.inc("dead_lettered_total", reason=str(verdict.reason))
        log.warning(
            "dead-lettered message %s from %r: %s", msg.message_id, verdict.site_id or "?", verdict.detail
        )
        return True

    def process_batch(self, batch: codec.Batch | codec.BatchRuns) -> list[str]:
        """Feed one verified batch to the machines, per plug in timestamp order; returns foreign plugs.

        Each reading is bounded first (refused ones are counted and skipped, the rest go on); plugs
        bound to another site, or beyond the site's plug limits, are refused and alerted. A decoded run
        whose columns are all within the bounds goes to its machine whole (``ReadingsRun``: decided per
        chunk); any other is checked reading by reading."""
        now_ms = self._now_ms()
        max_age_ms = round(self.settings.max_reading_age_s * 1000)
        max_skew_ms = round(self.settings.max_clock_skew_s * 1000)
        by_plug: dict[str, list[Reading]] = {}
        valid: dict[str, list[Reading] | codec.PlugRun] = {}
        if isinstance(batch, codec.BatchRuns) and batch_in_bounds(
            batch.extent, now_ms, max_age_ms, max_skew_ms, self.settings.rated_floor_w
        ):
            valid.update(batch.runs)  # every run within the bounds, decided once for the batch
        elif isinstance(batch, codec.BatchRuns):
            for mac, run in batch.runs.items():
                rated = self._params(mac).rated_power_w
                if run_in_bounds(run, now_ms, max_age_ms, max_skew_ms, rated):
                    valid[mac] = run
                else:
                    by_plug[mac] = list(run.readings())
        else:
            for r in batch.readings:
                rows = by_plug.get(r.mac)
                if rows is None:
                    rows = by_plug[r.mac] = []
                rows.append(r)
        # Bounds first, so a reading that cannot be trusted never binds a plug to a site either.
        for mac, rows in by_plug.items():
            rated = self._params(mac).rated_power_w
            ok = []
            for r in rows:
                why_not = check_reading(r, now_ms, max_age_ms, max_skew_ms, rated)
                if why_not is None:
                    ok.append(r)
                else:
                    self._refuse_reading(r, batch.site_id, str(why_not))
            if ok:
                ok.sort(key=_BY_TS)
                valid[mac] = ok
        admission = self.registry.admit(batch.site_id, valid, now_ms)
        foreign: list[str] = []
        for mac, why in admission.refused.items():
            self._refuse_plug(mac, batch.site_id, why, len(valid[mac]))
            if why is PlugRefusal.FOREIGN_PLUG:
                foreign.append(mac)
        ts = self.ports.timeseries
        readings = 0
        for mac in admission.admitted:
            chunk = valid[mac]
            plug = self._plug(mac, batch.site_id)
            if isinstance(chunk, codec.PlugRun):
                self._apply_safely(plug, m.ReadingsRun(chunk))
                ts.add_run(batch.site_id, chunk, str(plug.state.status))
            else:
                self._apply_safely(plug, m.Readings(tuple(chunk)))
                ts.add_readings(batch.site_id, chunk, str(plug.state.status))
            readings += len(chunk)
        if readings:
            self.metrics.inc("readings_total", readings)
        self.metrics.inc("batches_total")
        for mac in list(self._recover):
            self._try_recover(mac)
        return foreign

    def _refuse_reading(self, r: Reading, site_id: str, reason: str) -> None:
        self.metrics.inc("readings_refused_total", reason=reason, help_text="Readings refused by the bounds")
        if self._refusals.due(r.mac, reason, self.clock.monotonic()):
            log.warning(
                "refused a reading of %s from site %s: %s (said once per hour)", r.mac, site_id, reason
            )
            # One open alert per site (a flood of invented plugs must not open thousands).
            self.alerts.raise_alert(
                AlertKind.BAD_READINGS,
                site_id,
                f"readings refused: {reason} (latest: plug {r.mac})",
                self._now_ms(),
                site_id=site_id,
            )

    def _refuse_plug(self, mac: str, site_id: str, why: PlugRefusal, readings: int) -> None:
        self.metrics.inc("readings_refused_total", readings, reason=str(why))
        if why is PlugRefusal.FOREIGN_PLUG:
            owner = self.registry.owner(mac) or "?"
            message = f"site {site_id} reported plug {mac}, which belongs to site {owner}"
            self.alerts.raise_alert(
                AlertKind.FOREIGN_PLUG,
                f"{site_id}:{mac}",
                message,
                self._now_ms(),
                severity=Severity.CRITICAL,
                site_id=site_id,
            )
            subject = mac
        else:
            message = f"site {site_id} is over its plug limits (new plug {mac} refused)"
            self.alerts.raise_alert(AlertKind.PLUG_LIMIT, site_id, message, self._now_ms(), site_id=site_id)
            subject = site_id
        if self._refusals.due(subject, str(why), self.clock.monotonic()):
            log.warning("%s (said once per hour)", message)

    def process_outcome(self, outcome: codec.CommandOutcome) -> bool:
        """Apply a command result; False if it names a plug bound to another site (refused)."""
        owner = self.registry.owner(outcome.plug_mac)
        if owner is not None and owner != outcome.site_id:
            self._refuse_plug(outcome.plug_mac, outcome.site_id, PlugRefusal.FOREIGN_PLUG, 1)
            return False
        self.commands.answered(outcome)
        plug = self.plugs.get(outcome.plug_mac)
        if plug is None or plug.site_id != outcome.site_id:
            return plug is None
        self._apply_safely(plug, m.CommandResult(outcome.command_id, outcome.ok, outcome.relay_on))
        return True

    def _plug(self, mac: str, site_id: str) -> HubPlug:
        """The machine of a plug bound to ``site_id`` (the caller checked the binding)."""
        plug = self.plugs.get(mac)
        if plug is None:
            plug = self.plugs[mac] = HubPlug(m.new_state(mac, self._params(mac), self.now()), site_id)
            self.registry.entered(plug)
            self.mirror.mark(plug, self._now_ms())
        elif plug.site_id != site_id:  # released by an operator, then bound by the site reporting it now
            log.info("plug %s now belongs to site %s (was %s)", mac, site_id, plug.site_id)
            plug.site_id = site_id
            self.registry.settle(plug)
            self.mirror.mark(plug, self._now_ms())
            self.checkpoint_parts.touch(mac)
        return plug

    def plug_state(self, plug: HubPlug) -> codec.PlugState:
        """The plug-state document of ``plug`` now."""
        return plug_state_doc(plug, self.settings.plug_class(plug.state.mac), self._now_ms())

    # ------------------------------------------------------------------ the machines

    def _apply(self, plug: HubPlug, event: m.Event) -> tuple[m.Effect, ...]:
        due: int | EllipsisType | None = ...
        if type(event) is m.ReadingsRun:  # a quiet run advances the state in place (no copy)
            plug.state, effects, due = m.step_run_due(plug.state, event.run, self.now())
        else:
            plug.state, effects = m.step(plug.state, event, self.now())
        self.timers.arm(plug, self._now_ms(), due)
        self.money.track(plug)
        if effects:
            self._execute(plug, effects)
        return effects

    def _apply_safely(self, plug: HubPlug, event: m.Event) -> tuple[m.Effect, ...]:
        """``_apply`` with the plug's faults isolated: a bug faults this plug (relay off), nothing else.

        A ``StoreError`` is not the plug's fault: it propagates (the message is redelivered)."""
        try:
            return self._apply(plug, event)
        except StoreError:
            raise
        except Exception as exc:
            self._plug_failed(plug, exc)
            return ()

    def _plug_failed(self, plug: HubPlug, exc: Exception) -> None:
        mac = plug.state.mac
        log.exception("handling an event of plug %s raised; the plug is faulted, the hub goes on", mac)
        self.metrics.inc("plug_errors_total", help_text="Exceptions while handling one plug's event")
        reason = f"hub_error: {type(exc).__name__}"
        self.alerts.raise_alert(
            AlertKind.PLUG_FAULTED,
            mac,
            f"{reason}: {exc}"[:300],
            self._now_ms(),
            severity=Severity.CRITICAL,
            site_id=plug.site_id,
        )
        try:
            self._apply(plug, m.PlugFault(reason))
        except Exception:
            log.exception("plug %s cannot be faulted cleanly; sending relay off directly", mac)
            self.commands.send(
                plug.site_id, m.SendRelay(mac, False, 0, "", f"{mac}.fault.{self._now_ms()}", "fault")
            )
        self.mirror.mark(plug, self._now_ms())

    async def tick(self) -> None:
        """Time passes for every machine; flush mirrors; refresh trust/balances; checkpoint when due."""
        self.refresh_trust()
        self.sessions.retry()
        if self.ports.stops is not None:
            self.ports.stops.sync()  # the stops journalled since the last tick survive a power cut
        self._refresh_balances()
        self._share_balances()
        for plug in self.timers.due(self.plugs, self._now_ms()):  # only the machines with a timer due
            self._apply_safely(plug, m.Tick())
        self.leases.flush(self.plugs, self._now_ms())
        for mac in list(self._recover):
            self._try_recover(mac)
        self._mirror_dirty()
        self.requests.prune()
        if self.gc.maybe_refresh(self.clock.monotonic()):
            log.debug("collected and froze the long-lived objects in %.3f s CPU", self.gc.last_refresh_s)
        if self.clock.monotonic() - self._last_checkpoint >= self.settings.checkpoint_interval_s:
            self._checkpoint_due = True
        self._checkpoint_if_due()

    def _mirror_dirty(self) -> None:
        self.mirror.flush(self._now_ms())  # the plugs marked since their last write, not every plug

    def _checkpoint_if_due(self) -> None:
        """Write the checkpoint if its interval is over (at most once per tick or message, and not while
        the writer thread is still writing the last one)."""
        if self._checkpoint_due and not self._checkpoint_in_flight:
            self._checkpoint_due = False
            self.checkpoint(full=False)

    def _execute(self, plug: HubPlug, effects: Iterable[m.Effect]) -> None:
        for fx in effects:
            if isinstance(fx, m.SendRelay):
                if fx.reason == "keepalive" and self.settings.site_leases:
                    self.leases.keepalive(plug, fx, self._now_ms())  # one lease per site, see .leases
                else:
                    self.commands.send(plug.site_id, fx)
            elif isinstance(fx, m.StateChanged):
                self.mirror.mark(plug, self._now_ms(), fx.old)
                if fx.old not in _IDLE or fx.new not in _IDLE:
                    # Into the checkpoint's delta; an idle plug coming or going is not worth it (restored
                    # older, it is what a new plug is: OFFLINE until it reports, and its binding is stored).
                    self.checkpoint_parts.touch(fx.mac)
                if fx.new is m.Status.FINISHING:
                    self.sessions.finishing(plug)  # a restart must close it, never switch it back on
                self.metrics.inc("transitions_total", to=str(fx.new))
                resolve_on_state(self.alerts, fx.mac, str(fx.new))
                log.info("plug %s: %s -> %s (%s)", fx.mac, fx.old, fx.new, fx.reason)
            elif isinstance(fx, m.SessionStarted):
                self.checkpoint_parts.touch(fx.mac)
                self._recover.pop(fx.mac, None)
                self.sessions.started(plug, fx)
                if plug.state.status is m.Status.FINISHING:
                    self.sessions.finishing(plug)  # resumed straight into its finish
            elif isinstance(fx, m.SessionFinished):
                self.checkpoint_parts.touch(fx.record.mac)
                self.sessions.finished(plug, fx.record)
            elif isinstance(fx, m.RejectRequest):
                if fx.request_id:
                    self.requests.answer(fx.request_id, False, fx.reason, fx.session_id)
            elif isinstance(fx, m.Alert):
                self.metrics.inc("alerts_total", kind=fx.kind)
                log.warning("plug %s: %s: %s", fx.mac, fx.kind, fx.message)
                raise_machine_alert(self.alerts, fx.kind, fx.mac, fx.message, self._now_ms(), plug.site_id)
            elif isinstance(fx, m.SessionUpdated):
                self.sessions.progress(plug, fx)  # at most every progress_interval_s

    # ------------------------------------------------------------------ requests and balances

    async def poll_requests(self) -> None:
        """Answer every pending request in the store (also how requests written while down get answered)."""
        for req in self.store.pending_requests():
            self.handle_request(req)

    def handle_request(self, req: codec.ChargeRequest) -> None:
        """Turn one pending ``ChargeRequest`` into machine events; answered exactly once (guarded)."""
        self.requests.handle(req)
        self._checkpoint_if_due()

    def _refresh_balances(self) -> None:
        """Re-read the balances the store says changed, and those of the live users that are due.

        The serving hub reads the due ones on the request threads: the tick decides who, the reads run
        off the loop, and each result is applied on the loop by :meth:`Balances.read_back` (a debit posted
        while a read was in flight is never undone), then shared out to the user's sessions."""
        reads = self.money.reads
        try:
            changed = self._ledger_changes()
        except StoreError as exc:  # the staleness bound still holds; the tick's other work goes on
            log.warning("cannot read the ledger's changes (%s); next tick", exc)
            changed = set()
        if changed:
            self.money.changed(changed)
        if self.balance_reads_off_loop:
            for key in self.money.due_reads(limit=BALANCE_READS_IN_FLIGHT):
                task = asyncio.get_running_loop().create_task(self._read_balance(key))
                self._balance_reads.add(task)
                task.add_done_callback(self._balance_reads.discard)
        else:
            self.money.due()
        if self.money.reads > reads:
            self.metrics.inc("balance_reads_total", self.money.reads - reads)

    async def _read_balance(self, key: tuple[str, str]) -> None:
        """One due balance read on a request thread; applied and shared out on the loop."""
        balance: int | None = None
        try:
            balance = await self.requests.io(self.money.ledger.balance, *key)
        except StoreError as exc:  # the staleness bound still holds: the next check reads again
            log.warning("cannot read the balance of %s (%s); next check", key[0], exc)
        finally:
            self.money.read_back(key, balance)
        if balance is not None:
            self.metrics.inc("balance_reads_total")
        self._share_balances()

    async def balance_reads_done(self, timeout_s: float = 60.0) -> None:
        """Wait for the balance reads in flight (stop, tests)."""
        if self._balance_reads:
            await asyncio.wait(set(self._balance_reads), timeout=timeout_s)

    def _ledger_changes(self) -> set[str]:
        """The users whose ledger changed since the last call, when the store can tell (SQLite)."""
        since = getattr(self.store, "ledger_changes", None)
        if since is None:
            return set()
        cursor, users = since(self._ledger_cursor)
        self._ledger_cursor = int(cursor)
        return set(users)

    def _share_balances(self) -> None:
        """A user's live sessions share one balance: each sees the balance less what the others used."""
        for plug, update in self.money.updates():
            self._apply_safely(plug, update)

    def credit_arrived(self, user_id: str) -> None:
        """Re-read one user's balances now (e.g. after an operator credit) and tell their live sessions."""
        self.money.refresh_user(user_id)
        self._share_balances()

    # ------------------------------------------------------------------ checkpoint and recovery

    def checkpoint(self, full: bool = True) -> None:
        """Write the checkpoint: every part (``full``), or a rotation of parts and the delta of changed plugs.

        Encoded here, from the state now. Written here too, unless the hub has a store writer (serving)
        and this is a periodic checkpoint: then the encoded documents go to the writer thread, and the
        next periodic checkpoint waits until they are written (a failure is counted, its parts owed)."""
        name = f"{self.CHECKPOINT}-{self.settings.shard}"
        now_ms = self._now_ms()
        tracker = self.checkpoint_parts
        parts = set(range(ckpt.PARTS)) if full else tracker.take()
        grouped: dict[int, dict[str, tuple[str, m.MachineState]]] = {k: {} for k in parts}
        for mac, p in self.plugs.items():
            group = grouped.get(ckpt.part_of(mac))
            if group is not None:
                group[mac] = (p.site_id, p.state)
        writer = None if full else self.mirror.writer
        if writer is not None:
            blobs = [(ckpt.part_name(name, k), ckpt.encode_part(now_ms, grouped[k])) for k in sorted(parts)]
            tracker.written(parts)
            blobs.append((ckpt.delta_name(name), ckpt.encode_part(now_ms, self._checkpoint_delta())))
            blobs.append((name, ckpt.encode_head(now_ms, self.ingest.to_dict(), self.sessions.pending)))
            self._checkpoint_in_flight = True
            loop = asyncio.get_running_loop()

            def write() -> None:  # the writer thread
                for doc_name, blob in blobs:
                    self.store.save_checkpoint(doc_name, blob)

            def done(exc: BaseException | None) -> None:  # the writer thread
                with contextlib.suppress(RuntimeError):  # the loop is closed: the hub has stopped
                    loop.call_soon_threadsafe(self._checkpoint_written, parts, exc)

            if not writer.submit_job("checkpoint", Job(write, done)):
                self._checkpoint_written(parts, RuntimeError("the last checkpoint is still queued"))
            return
        try:
            for k in sorted(parts):
                self.store.save_checkpoint(ckpt.part_name(name, k), ckpt.encode_part(now_ms, grouped[k]))
            tracker.written(parts)
            self.store.save_checkpoint(
                ckpt.delta_name(name), ckpt.encode_part(now_ms, self._checkpoint_delta())
            )
            head = ckpt.encode_head(now_ms, self.ingest.to_dict(), self.sessions.pending)
            self.store.save_checkpoint(name, head)
        except BaseException:
            tracker.give_back(parts)
            raise
        self._last_checkpoint = self.clock.monotonic()
        self.metrics.inc("checkpoints_total")

    def _checkpoint_delta(self) -> dict[str, tuple[str, m.MachineState]]:
        """The plugs changed since their part was written (their state now)."""
        return {
            mac: (self.plugs[mac].site_id, self.plugs[mac].state)
            for mac in self.checkpoint_parts.changed
            if mac in self.plugs
        }

    def _checkpoint_written(self, parts: set[int], exc: BaseException | None) -> None:
        """The writer thread wrote a periodic checkpoint (``exc`` None) or failed to: its parts are owed."""
        self._checkpoint_in_flight = False
        if exc is not None:
            self.checkpoint_parts.give_back(parts)
            log.warning("writing the checkpoint failed (%s); its parts are written next time", exc)
            self.metrics.inc("loop_errors_total", loop="checkpoint", kind="expected")
            return
        self._last_checkpoint = self.clock.monotonic()
        self.metrics.inc("checkpoints_total")

    def _load_checkpoint(self) -> None:
        name = f"{self.CHECKPOINT}-{self.settings.shard}"
        blob = self.store.load_checkpoint(name)
        if blob is None:
            return
        snap = ckpt.decode(
            blob,
            self._params,
            lambda k: self.store.load_checkpoint(ckpt.part_name(name, k)),
            lambda: self.store.load_checkpoint(ckpt.delta_name(name)),
        )
        for mac, (site_id, state) in snap.plugs.items():
            plug = self.plugs[mac] = HubPlug(state, site_id)
            self.registry.entered(plug)
            self.timers.arm(plug, snap.saved_at_ms)
            self.money.track(plug)
        self.ingest.load(snap.ingest)
        self.sessions.pending.update(snap.finishes)
        log.info(
            "resumed %d plugs from the checkpoint of %s",
            len(self.plugs),
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(snap.saved_at_ms / 1000)),
        )

    def _reconcile(self) -> None:
        """Align the checkpoint with sessions the store knows (started, finished or debited after it)."""
        active = {s.session_id: s for s in self.store.list_sessions(active_only=True, limit=100_000)}
        journal = self.ports.stops
        for plug in self.plugs.values():
            sess = plug.state.session
            if sess is None:
                continue
            doc = self.store.get_session(sess.session_id)
            if doc is not None and doc.status == codec.ChargeSession.STATUS_COMPLETED:
                self.sessions.billed_before.add(sess.session_id)  # closed below, never billed again
            stopped = (doc is not None and doc.stop_reason) or (journal and journal.reason(sess.session_id))
            if (doc is not None and doc.status == codec.ChargeSession.STATUS_COMPLETED) or (
                stopped and plug.state.status is not m.Status.FINISHING
            ):
                # Finished (and billed), or its finish had begun, after the checkpoint (the store's note,
                # or this hub's own journal when the store was down then): close it (no second debit)
                # and switch off; never resume it.
                self._apply(plug, m.StopRequest(sess.user_id, sess.session_id, "", remote=True))
            active.pop(sess.session_id, None)
        for doc in list(active.values()):
            debit = self.store.get_ledger_entry(doc.session_id)
            if debit is not None:
                self.sessions.close_debited(doc, debit)
                del active[doc.session_id]
        for doc in active.values():
            if doc.session_id in self.sessions.pending:
                continue  # finished before the restart; its write is retried, never resumed
            if doc.site_id:
                self._plug(doc.plug_mac, self.registry.bind(doc.plug_mac, doc.site_id, self._now_ms()))
            if doc.plug_mac in self.plugs:
                self._recover[doc.plug_mac] = doc
        if self._recover:
            log.info("resuming %d session(s) started after the last checkpoint", len(self._recover))
            for mac in list(self._recover):
                self._try_recover(mac)
        if journal is not None:  # entries of sessions closed meanwhile (e.g. finished just before a kill)
            live = {p.state.session.session_id for p in self.plugs.values() if p.state.session is not None}
            journal.keep_only(
                live | set(self.sessions.pending) | {d.session_id for d in self._recover.values()}
            )

    def _settled(self, session_id: str, mac: str) -> None:
        """``session_id``'s finish is written: the store no longer has it ACTIVE, so no restart can resume
        it onto its plug, and the plug need not keep its id (by row in a map: most plugs then hold none)."""
        plug = self.plugs.get(mac)
        if plug is not None and plug.last_session_id == session_id:
            plug.last_session_id = ""

    def _stop_recovering(self, mac: str, user_id: str) -> str:
        """A stop asked by ``user_id`` for ``mac`` while a session of theirs there waits to be resumed
        (started after the last checkpoint; the plug is still busy closing an older one): it is resumed
        straight into its finish, relay off, and billed once. Returns its id, or ``""`` if none."""
        doc = self._recover.get(mac)
        if doc is None or doc.user_id != user_id:
            return ""
        if not doc.stop_reason:
            doc.stop_reason = str(m.StopReason.LOCAL)
            if self.ports.stops is not None:  # survives another restart before the plug is free
                self.ports.stops.record(doc.session_id, doc.stop_reason)
        log.info(
            "session %s: stopped by its user before it was resumed; resuming it into its finish",
            doc.session_id,
        )
        return doc.session_id

    def _try_recover(self, mac: str) -> None:
        """Resume a session the store has ACTIVE but the checkpoint predates (billed from its start counter)."""
        doc = self._recover.get(mac)
        plug = self.plugs.get(mac)
        if doc is None or plug is None:
            return
        sess = plug.state.session
        if sess is not None:
            if sess.session_id == doc.session_id:
                self._recover.pop(mac, None)
            return
        if plug.state.status not in (m.Status.AVAILABLE, m.Status.OFFLINE):
            return  # busy with something else (e.g. FINISHING an older session): try again later
        tariff = self.tariff_for(plug.site_id)
        event = m.StartRequest(
            doc.session_id,
            doc.user_id,
            tariff,
            self.money.available(doc.user_id, tariff.currency),
            doc.request_id,
            start_counter_mwh=doc.start_counter_mwh,
            started_at_ms=doc.started_at_ms,
            # its finish had begun (the store's note, or this hub's journal): resumed into FINISHING, relay off
            stop_reason=doc.stop_reason
            or (self.ports.stops.reason(doc.session_id) if self.ports.stops else ""),
        )
        effects = self._apply(plug, event)
        if any(isinstance(fx, m.SessionStarted) for fx in effects):
            self._recover.pop(mac, None)
            log.info("resumed session %s on %s from the store", doc.session_id, mac)

    # ------------------------------------------------------------------ metrics

    def _init_metrics(self) -> None:
        def by_state() -> Mapping[tuple[tuple[str, str], ...], float]:
            counts: dict[tuple[tuple[str, str], ...], float] = {}
            for p in self.plugs.values():
                key = (("state", str(p.state.status)),)
                counts[key] = counts.get(key, 0) + 1
            return counts

        self.metrics.gauge_probe("plugs", by_state, "Plugs by state")
        self.metrics.gauge_probe(
            "open_sessions",
            lambda: {(): float(sum(1 for p in self.plugs.values() if p.state.session))},
            "Open sessions",
        )
        self.metrics.gauge_probe(
            "timeseries_dropped_points",
            lambda: {(): float(self.ports.timeseries.stats().dropped)},
            "Time-series points dropped (buffer overflow)",
        )
        self.metrics.gauge_probe(
            "timeseries_pending_points",
            lambda: {(): float(self.ports.timeseries.stats().pending)},
            "Time-series points waiting to be written",
        )
        stops = self.ports.stops
        if stops is not None:
            self.metrics.gauge_probe(
                "stop_journal_errors",
                lambda: {(): float(stops.errors)},
                "Stop-journal appends or syncs the local disk refused",
            )
        instrument_hub(self.metrics, self.alerts, self.clock.monotonic, lambda: self._last_checkpoint)

    # ------------------------------------------------------------------ operator helpers

    def new_request_id(self) -> str:
        return uuid.uuid4().hex[:16]
