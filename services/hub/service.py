"""The hub: one state machine per plug in memory, fed by telemetry and user requests, acting through ports.

Ports: a :class:`~chargectl.services.adapters.bus.Bus` (telemetry in, signed relay commands out, dead
letters), a :class:`~chargectl.services.adapters.store.Store` (requests, plug states, sessions, ledger,
sites, checkpoint), a :class:`~chargectl.services.adapters.timeseries.TimeSeries`, the site command keys
and the telemetry keyring. The same class runs embedded (memory bus, SQLite) and distributed
(Pub/Sub, Firestore, InfluxDB).

Reliability:
- Telemetry is acked only after its readings reached the machines; a batch is recorded in the
  per-site sequence window then, so redeliveries and agent replays are no-ops.
- Undecodable, unverified or revoked messages are published to the dead-letter topic with the reason
  and counted; if that publish fails the message is nacked, never acked silently.
- A finished session is debited with ledger entry id = session id (create-if-absent) and its document
  is written only while not yet COMPLETED, so a replay from an older checkpoint can never bill twice.
- The checkpoint (every machine, the sequence windows) is written periodically and at every session
  start and finish; at start the hub reconciles it with the store (sessions started after the last
  checkpoint are resumed, sessions finished after it are closed without a second debit).
- Plug states are mirrored to the store on transitions only, at most once per plug per
  ``plug_state_min_interval_s`` (later changes are coalesced), never per reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from chargectl.common import codec
from chargectl.common.alerts import AlertBook, AlertKind, Severity
from chargectl.common.clock import Clock, SystemClock
from chargectl.common.errors import ChargectlError, StoreError, TransportError
from chargectl.common.keys import Keyring, SigningKey
from chargectl.common.readings import Reading
from chargectl.common.runner import run_until_signalled
from chargectl.common.topics import DEAD_LETTER_TOPIC, TELEMETRY_TOPIC, command_topic, telemetry_subscription
from chargectl.provisioner.trust import telemetry_keyring
from chargectl.services.adapters.bus import Bus, BusMessage, SubscriptionHandle
from chargectl.services.adapters.store import Store
from chargectl.services.adapters.timeseries import SessionEvent, TimeSeries
from chargectl.services.hub import machine as m
from chargectl.services.hub.billing import Tariff
from chargectl.services.hub.health import HealthServer, Metrics, Route
from chargectl.services.hub.ingest import Ingest, Rejected, Skipped
from chargectl.services.hub.intake import RefusalLog, check_reading
from chargectl.services.hub.params import PlugParams
from chargectl.services.hub.registry import PlugRefusal, PlugRegistry
from chargectl.services.hub.settings import HubSettings
from chargectl.services.payments.ledger import Ledger

__all__ = ["Hub", "HubPorts", "tariff_from_document"]

log = logging.getLogger("chargectl.hub")

CommandKeys = Callable[[codec.Site, int], SigningKey]
"""The key to sign a site's commands with at a time in ms (``provisioner.trust.CommandSigner.key_for``);
raises ``ChargectlError`` if there is none."""


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


@dataclass
class _Plug:
    state: m.MachineState
    site_id: str
    dirty: bool = False  # plug state document needs writing
    mirrored_ms: int = 0
    pending: list[str] = field(default_factory=list)  # request ids awaiting this plug's answer


class Hub:
    """See the module docstring. ``serve()`` runs it; ``run_once()`` is one pass of every loop (tests)."""

    CHECKPOINT = "hub"

    def __init__(self, settings: HubSettings, ports: HubPorts, clock: Clock | None = None) -> None:
        self.settings = settings
        self.ports = ports
        self.clock = clock or SystemClock()
        self.store = ports.store
        self.ledger = Ledger(ports.store)
        self.plugs: dict[str, _Plug] = {}
        self.ingest = Ingest(Keyring(), shard=settings.shard)
        self.registry = PlugRegistry(
            ports.store, settings.max_new_plugs_per_batch, settings.max_plugs_per_site
        )
        self.balances: dict[tuple[str, str], int] = {}  # (user, currency) -> ledger balance
        self.metrics = Metrics()
        self.alerts = AlertBook()  # open alerts; sinks and the console read them
        self.http_routes: dict[str, Route] = {}  # path prefix -> handler, served beside /healthz
        self._params_by_class: dict[str, PlugParams] = {}
        self._site_tariffs: dict[str, Tariff] = {}
        self._sites: dict[str, codec.Site] = {}
        self._default_tariff = settings.tariff.tariff()
        self._subscription: SubscriptionHandle | None = None
        self._health: HealthServer | None = None
        self._stop = asyncio.Event()
        self._recover: dict[str, codec.ChargeSession] = {}  # sessions to resume once their plug reports
        self._command_sent: dict[str, float] = {}
        self._handled: dict[str, float] = {}  # request id -> when handled (monotonic); bounded by age
        self._pending_finishes: dict[str, tuple[codec.ChargeSession, codec.LedgerEntry | None]] = {}
        self._loop_errors: dict[str, str] = {}  # loop name -> the exception of its last failed pass
        self._refusals = RefusalLog()
        self._checkpoint_due = False
        self._last_checkpoint = 0.0
        self._last_trust = 0.0
        self._last_balance = 0.0
        self._started = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._init_metrics()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load the checkpoint and the ledger, reconcile with the store, subscribe to telemetry."""
        self.refresh_trust(force=True)
        self.balances = self.ledger.balances()
        self._load_checkpoint()
        for mac, plug in self.plugs.items():  # plugs known from before bindings existed keep their site
            plug.site_id = self.registry.bind(mac, plug.site_id, self._now_ms())
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

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.stop()
            self._subscription = None
        if self._started:
            self.checkpoint()
        self.ports.timeseries.flush(timeout_s=5)
        if self._health is not None:
            await self._health.stop()
        self._started = False

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
            loop.call_soon_threadsafe(self._handle_request_safely, req)

        unwatch: Callable[[], None] = watch(on_request)
        return unwatch

    def _handle_request_safely(self, req: codec.ChargeRequest) -> None:
        try:
            self.handle_request(req)
        except ChargectlError as exc:
            log.warning("request %s not handled yet (%s); it stays pending", req.request_id, exc)

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
        return round(self.clock.now() * 1000)

    # ------------------------------------------------------------------ trust and tariffs

    def refresh_trust(self, force: bool = False) -> None:
        mono = self.clock.monotonic()
        if not force and mono - self._last_trust < self.settings.trust_refresh_s:
            return
        self._last_trust = mono
        sites = self.store.list_sites()
        self._sites = {s.site_id: s for s in sites}
        self.ingest.site_shards = {s.site_id: s.shard for s in sites}
        self.ingest.keyring = telemetry_keyring(sites, self._now_ms())
        for mac, site_id in self.registry.refresh().items():  # an operator moved a plug
            plug = self.plugs.get(mac)
            if plug is not None and plug.site_id != site_id:
                log.info("plug %s assigned from site %s to %s", mac, plug.site_id, site_id)
                plug.site_id = site_id
                plug.dirty = True
        self.ingest.revoked_sites = {s.site_id for s in sites if s.status == codec.Site.STATUS_REVOKED}
        self._site_tariffs = {
            s.site_id: tariff_from_document(s.tariff) for s in sites if s.HasField("tariff")
        }

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

    def process_batch(self, batch: codec.Batch) -> list[str]:
        """Feed one verified batch to the machines, per plug in timestamp order; returns foreign plugs.

        Each reading is bounded first (refused ones are counted and skipped, the rest go on); plugs
        bound to another site, or beyond the site's plug limits, are refused and alerted."""
        now_ms = self._now_ms()
        max_age_ms = round(self.settings.max_reading_age_s * 1000)
        max_skew_ms = round(self.settings.max_clock_skew_s * 1000)
        by_plug: dict[str, list[Reading]] = {}
        for r in batch.readings:
            rows = by_plug.get(r.mac)
            if rows is None:
                rows = by_plug[r.mac] = []
            rows.append(r)
        admission = self.registry.admit(batch.site_id, by_plug, now_ms)
        foreign: list[str] = []
        for mac, why in admission.refused.items():
            self._refuse_plug(mac, batch.site_id, why, len(by_plug[mac]))
            if why is PlugRefusal.FOREIGN_PLUG:
                foreign.append(mac)
        ts = self.ports.timeseries
        for mac in admission.admitted:
            rated = self._params(mac).rated_power_w
            rows = []
            for r in by_plug[mac]:
                why_not = check_reading(r, now_ms, max_age_ms, max_skew_ms, rated)
                if why_not is None:
                    rows.append(r)
                else:
                    self._refuse_reading(r, batch.site_id, str(why_not))
            if not rows:
                continue
            rows.sort(key=lambda r: r.ts_ms)
            plug = self._plug(mac, batch.site_id)
            self._apply_safely(plug, m.Readings(tuple(rows)))
            ts.add_readings(batch.site_id, rows, str(plug.state.status))
            self.metrics.inc("readings_total", len(rows))
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
            self.alerts.raise_alert(
                AlertKind.BAD_READINGS, r.mac, f"readings refused: {reason}", self._now_ms(), site_id=site_id
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
        plug = self.plugs.get(outcome.plug_mac)
        sent = self._command_sent.pop(outcome.command_id, None)
        if sent is not None:
            latency = max(0.0, self.now() - sent)
            self.metrics.set("command_latency_seconds", latency, help_text="Last command round trip")
            self.metrics.inc("command_latency_seconds_sum", latency)
            self.metrics.inc("command_results_total", reason=outcome.reason)
        if plug is None or plug.site_id != outcome.site_id:
            return plug is None
        self._apply_safely(plug, m.CommandResult(outcome.command_id, outcome.ok, outcome.relay_on))
        return True

    def _plug(self, mac: str, site_id: str) -> _Plug:
        """The machine of a plug bound to ``site_id`` (the caller checked the binding)."""
        plug = self.plugs.get(mac)
        if plug is None:
            plug = self.plugs[mac] = _Plug(m.new_state(mac, self._params(mac), self.now()), site_id)
            plug.dirty = True
        return plug

    # ------------------------------------------------------------------ the machines

    def _apply(self, plug: _Plug, event: m.Event) -> tuple[m.Effect, ...]:
        plug.state, effects = m.step(plug.state, event, self.now())
        if effects:
            self._execute(plug, effects)
        return effects

    def _apply_safely(self, plug: _Plug, event: m.Event) -> tuple[m.Effect, ...]:
        """``_apply`` with the plug's faults isolated: a bug faults this plug (relay off), nothing else.

        A ``StoreError`` is not the plug's fault: it propagates (the message is redelivered)."""
        try:
            return self._apply(plug, event)
        except StoreError:
            raise
        except Exception as exc:
            self._plug_failed(plug, exc)
            return ()

    def _plug_failed(self, plug: _Plug, exc: Exception) -> None:
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
            self._send_command(plug, m.SendRelay(mac, False, 0, "", f"{mac}.fault.{self._now_ms()}", "fault"))
        plug.dirty = True

    async def tick(self) -> None:
        """Time passes for every machine; flush mirrors; refresh trust/balances; checkpoint when due."""
        self.refresh_trust()
        self._retry_finishes()
        self._refresh_balances()
        self._share_balances()
        for plug in list(self.plugs.values()):
            self._apply_safely(plug, m.Tick())
        for mac in list(self._recover):
            self._try_recover(mac)
        self._mirror_dirty()
        self._prune_handled()
        if self.clock.monotonic() - self._last_checkpoint >= self.settings.checkpoint_interval_s:
            self._checkpoint_due = True
        self._checkpoint_if_due()

    def _checkpoint_if_due(self) -> None:
        """Write the checkpoint if a session started, began finishing or finished since the last one."""
        if self._checkpoint_due:
            self._checkpoint_due = False
            self.checkpoint()

    def _execute(self, plug: _Plug, effects: Iterable[m.Effect]) -> None:
        for fx in effects:
            if isinstance(fx, m.SendRelay):
                self._send_command(plug, fx)
            elif isinstance(fx, m.StateChanged):
                plug.dirty = True
                if fx.new is m.Status.FINISHING:
                    self._checkpoint_due = True  # a restart must find the relay commanded off
                self.metrics.inc("transitions_total", to=str(fx.new))
                log.info("plug %s: %s -> %s (%s)", fx.mac, fx.old, fx.new, fx.reason)
            elif isinstance(fx, m.SessionStarted):
                self._session_started(plug, fx)
            elif isinstance(fx, m.SessionFinished):
                self._session_finished(plug, fx.record)
            elif isinstance(fx, m.RejectRequest):
                self._answer(fx.request_id, False, fx.reason, fx.session_id)
            elif isinstance(fx, m.Alert):
                self.metrics.inc("alerts_total", kind=fx.kind)
                log.warning("plug %s: %s: %s", fx.mac, fx.kind, fx.message)
            elif isinstance(fx, m.SessionUpdated):
                pass  # live figures are in the machine; documents change on start/finish only

    def _send_command(self, plug: _Plug, fx: m.SendRelay) -> None:
        now = self.now()
        cmd = codec.Command(
            command_id=fx.command_id,
            site_id=plug.site_id,
            plug_mac=fx.mac,
            on=fx.on,
            issued_at_ms=round(now * 1000),
            expires_at_ms=round((now + self.settings.command_lifetime_s) * 1000),
            session_id=fx.session_id,
            auto_off_s=fx.auto_off_s,
        )
        try:
            site = self._sites.get(plug.site_id)
            if site is None:
                raise StoreError(f"site {plug.site_id} is not provisioned")
            key = self.ports.command_keys(site, cmd.issued_at_ms)
        except ChargectlError as exc:
            self.metrics.inc("commands_failed_total", reason="no_key")
            log.error("cannot sign a command for site %s: %s", plug.site_id, exc)
            return
        data, attrs = codec.pack_command(cmd, key)
        self._command_sent[fx.command_id] = now
        if len(self._command_sent) > 10_000:
            self._command_sent.pop(next(iter(self._command_sent)))
        self.metrics.inc("commands_sent_total")

        async def publish() -> None:
            try:
                await self.ports.bus.publish(command_topic(plug.site_id), data, attrs)
            except TransportError as exc:
                # The machine re-sends until the relay is confirmed, so a lost command is retried.
                self.metrics.inc("commands_failed_total", reason="publish")
                log.warning("command %s to %s not published: %s", fx.command_id, fx.mac, exc)

        self._spawn(publish())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ sessions and requests

    def _session_started(self, plug: _Plug, fx: m.SessionStarted) -> None:
        self._recover.pop(fx.mac, None)
        self._checkpoint_due = True
        existing = self.store.get_session(fx.session_id)
        if existing is not None and (
            existing.status == codec.ChargeSession.STATUS_COMPLETED or existing.user_id != fx.user_id
        ):
            # Never overwrite a session document (hub-made ids make this a bug or a replay).
            log.error("session %s already has a document; not overwriting it", fx.session_id)
            self._answer(fx.request_id, True, "", fx.session_id)
            return
        doc = codec.ChargeSession(
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
        self.store.put_session(doc)
        self.ports.timeseries.add_session_event(
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
        self._answer(fx.request_id, True, "", fx.session_id)
        log.info("session %s started on %s for %s", fx.session_id, fx.mac, fx.user_id)

    def _others_cost(self, user_id: str, currency: str, except_session: str) -> int:
        """What the user's other live sessions in ``currency`` have used so far (minor units)."""
        total = 0
        for p in self.plugs.values():
            sess = p.state.session
            if (
                sess is not None
                and sess.user_id == user_id
                and sess.session_id != except_session
                and sess.tariff.currency == currency
            ):
                total += sess.cost().total_minor
        return total

    def _session_finished(self, plug: _Plug, rec: m.SessionRecord) -> None:
        """Bill a finished session: the COMPLETED document and its debit in one store transaction.

        The debit is at most what the balance allows (the user's ledger balance in the tariff's
        currency, less what their other live sessions used); energy held back by the machine or a cost
        beyond the balance marks the session ``review_reason``. A store failure keeps the pair for a
        retry on every tick (and in the checkpoint): the session is billed exactly once."""
        self._checkpoint_due = True
        currency = rec.tariff.currency
        cost = rec.cost_minor
        try:
            balance = self.ledger.balance(rec.user_id, currency)
            self.balances[(rec.user_id, currency)] = balance
        except StoreError:
            balance = self.balances.get((rec.user_id, currency), 0)
        available = max(0, balance - self._others_cost(rec.user_id, currency, rec.session_id))
        debit = min(cost, available)
        reviews = [rec.review] if rec.review else []
        if debit < cost:
            reviews.append(f"cost {cost} above the available balance {available}; debited {debit}")
        doc = codec.ChargeSession(
            session_id=rec.session_id,
            user_id=rec.user_id,
            plug_mac=rec.mac,
            site_id=plug.site_id,
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
        if doc.review_reason:
            self.metrics.inc("sessions_needs_review_total")
            self.alerts.raise_alert(
                AlertKind.NEEDS_REVIEW,
                rec.session_id,
                doc.review_reason,
                self._now_ms(),
                site_id=plug.site_id,
            )
        self._pending_finishes[rec.session_id] = (doc, entry)
        self._finish(rec.session_id)
        self.ports.timeseries.add_session_event(
            SessionEvent(
                rec.ended_at_ms,
                plug.site_id,
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

    def _finish(self, session_id: str) -> bool:
        """Write one pending finish (document + debit, one transaction); False if the store failed."""
        doc, entry = self._pending_finishes[session_id]
        existing = None
        try:
            existing = self.store.get_session(session_id)
            if existing is not None and existing.started_at_ms:
                doc.started_at_ms = existing.started_at_ms
                doc.start_counter_mwh = existing.start_counter_mwh
            written = self.store.finish_session(doc, entry)
        except StoreError as exc:
            self.metrics.inc("finish_retries_total")
            log.warning("session %s not written yet (%s); retrying every tick", session_id, exc)
            return False
        del self._pending_finishes[session_id]
        if not written:
            log.info("session %s was already completed and billed; not billing again", session_id)
        elif entry is not None:
            key = (entry.user_id, entry.amount.currency)
            self.balances[key] = self.balances.get(key, 0) + entry.amount.amount_minor
        return written

    def _retry_finishes(self) -> None:
        for session_id in list(self._pending_finishes):
            if not self._finish(session_id):
                return  # the store is still down: try again next tick

    def _answer(self, request_id: str, accepted: bool, reason: str, session_id: str) -> None:
        status = codec.ChargeRequest.STATUS_ACCEPTED if accepted else codec.ChargeRequest.STATUS_REJECTED
        if self.store.answer_request(request_id, status, reason, session_id, self._now_ms()):
            outcome = "accepted" if accepted else "rejected"
            self.metrics.inc("requests_answered_total", outcome=outcome, reason=reason or "ok")
            if not accepted:
                log.debug("request %r rejected: %s", request_id, reason)

    async def poll_requests(self) -> None:
        """Answer every pending request in the store (also how requests written while down get answered)."""
        for req in self.store.pending_requests():
            self.handle_request(req)

    def _prune_handled(self) -> None:
        """Forget handled request ids once they are too old to be executed anyway (bounded memory)."""
        horizon = self.clock.monotonic() - 2 * self.settings.request_max_age_s
        if self._handled and next(iter(self._handled.values())) < horizon:
            self._handled = {rid: t for rid, t in self._handled.items() if t >= horizon}

    def _refusal(self, req: codec.ChargeRequest) -> str:
        """Why a pending request is refused before it reaches a machine, or "" if it may go on."""
        now_ms = self._now_ms()
        max_age_ms = self.settings.request_max_age_s * 1000
        if req.created_at_ms <= 0 or now_ms - req.created_at_ms > max_age_ms:
            return "expired"
        if req.created_at_ms - now_ms > self.settings.max_clock_skew_s * 1000:
            return "created_in_future"
        if req.action not in (codec.ChargeRequest.ACTION_START, codec.ChargeRequest.ACTION_STOP):
            return "bad_action"
        if not req.user_id:
            return "no_user"
        if req.plug_mac not in self.plugs:
            return "unknown_plug"
        if self.store.get_user(req.user_id) is None:
            return "no_account"
        return ""

    def handle_request(self, req: codec.ChargeRequest) -> None:
        """Turn one pending ``ChargeRequest`` into machine events; answered exactly once (guarded).

        The request id is the store's document id; the session id is made here."""
        pending = (codec.ChargeRequest.STATUS_PENDING, codec.ChargeRequest.STATUS_UNSPECIFIED)
        if req.status not in pending:
            return
        rid = req.request_id
        if rid in self._handled:
            current = self.store.get_request(rid)
            if current is None or current.status not in pending:
                return
        self._handled[rid] = self.clock.monotonic()
        if not rid:
            self._answer(rid, False, "no_request_id", "")
            return
        why = self._refusal(req)
        if why:
            self._answer(rid, False, why, "")
            return
        plug = self.plugs[req.plug_mac]
        live = plug.state.session
        if req.action == codec.ChargeRequest.ACTION_START:
            if live is not None and live.request_id == rid:
                self._answer(rid, True, "", live.session_id)  # started before; the answer was lost
                return
            session_id = f"sess-{uuid.uuid4().hex}"
            tariff = self.tariff_for(plug.site_id)
            # Top-ups land in the ledger from other processes (the payments webhook): read it fresh.
            balance = self.ledger.balance(req.user_id, tariff.currency)
            self.balances[(req.user_id, tariff.currency)] = balance
            available = balance - self._others_cost(req.user_id, tariff.currency, "")
            event: m.Event = m.StartRequest(session_id, req.user_id, tariff, available, rid)
        else:
            session_id = live.session_id if live else ""
            event = m.StopRequest(req.user_id, "", rid)
        effects = self._apply_safely(plug, event)
        if req.action == codec.ChargeRequest.ACTION_STOP and not any(
            isinstance(f, m.RejectRequest) for f in effects
        ):
            self._answer(rid, True, "", session_id)
        elif not effects:
            self._answer(rid, False, "duplicate_request", session_id)
        self._checkpoint_if_due()

    # ------------------------------------------------------------------ balances

    def _refresh_balances(self) -> None:
        mono = self.clock.monotonic()
        if mono - self._last_balance < self.settings.balance_refresh_s:
            return
        self._last_balance = mono
        keys = {
            (p.state.session.user_id, p.state.session.tariff.currency)
            for p in self.plugs.values()
            if p.state.session
        }
        for user_id, currency in keys:
            self.balances[(user_id, currency)] = self.ledger.balance(user_id, currency)

    def _share_balances(self) -> None:
        """A user's live sessions share one balance: each sees the balance less what the others used."""
        for plug in self.plugs.values():
            sess = plug.state.session
            if sess is None:
                continue
            key = (sess.user_id, sess.tariff.currency)
            if key not in self.balances:
                continue
            available = self.balances[key] - self._others_cost(
                sess.user_id, sess.tariff.currency, sess.session_id
            )
            if available != sess.balance_minor:
                self._apply_safely(plug, m.BalanceUpdate(sess.user_id, available))

    def credit_arrived(self, user_id: str) -> None:
        """Re-read one user's balances now (e.g. after an operator credit) and tell their live sessions."""
        for (uid, currency), _ in list(self.balances.items()):
            if uid == user_id:
                self.balances[(uid, currency)] = self.ledger.balance(uid, currency)
        for currency, amount in self.ledger.balances_of(user_id).items():
            self.balances[(user_id, currency)] = amount
        self._share_balances()

    # ------------------------------------------------------------------ mirror

    def _mirror_dirty(self) -> None:
        now_ms = self._now_ms()
        min_gap = self.settings.plug_state_min_interval_s * 1000
        for plug in self.plugs.values():
            if plug.dirty and now_ms - plug.mirrored_ms >= min_gap:
                self.store.put_plug_state(self.plug_state(plug))
                plug.dirty = False
                plug.mirrored_ms = now_ms
                self.metrics.inc("plug_state_writes_total")

    def plug_state(self, plug: _Plug) -> codec.PlugState:
        s = plug.state
        return codec.PlugState(
            plug_mac=s.mac,
            site_id=plug.site_id,
            plug_class=_PLUG_CLASS.get(self.settings.plug_class(s.mac), 0),  # type: ignore[arg-type]
            status=_STATUS_DOC[s.status],  # type: ignore[arg-type]
            reason=s.reason,
            relay_on=bool(s.relay_on),
            power_w=s.power_w,
            energy_counter_mwh=s.counter_mwh or 0,
            session_id=s.session.session_id if s.session else "",
            updated_at_ms=self._now_ms(),
            last_reading_ms=s.last_ts_ms or 0,
        )

    # ------------------------------------------------------------------ checkpoint

    def checkpoint(self) -> None:
        data = {
            "version": 1,
            "saved_at_ms": self._now_ms(),
            "plugs": {mac: {"site": p.site_id, "state": m.to_dict(p.state)} for mac, p in self.plugs.items()},
            "ingest": self.ingest.to_dict(),
            "finishes": {
                sid: [doc.SerializeToString().hex(), entry.SerializeToString().hex() if entry else ""]
                for sid, (doc, entry) in self._pending_finishes.items()
            },
        }
        blob = zlib.compress(json.dumps(data, separators=(",", ":")).encode(), 6)
        self.store.save_checkpoint(f"{self.CHECKPOINT}-{self.settings.shard}", blob)
        self._last_checkpoint = self.clock.monotonic()
        self.metrics.inc("checkpoints_total")

    def _load_checkpoint(self) -> None:
        blob = self.store.load_checkpoint(f"{self.CHECKPOINT}-{self.settings.shard}")
        if blob is None:
            return
        try:
            data = json.loads(zlib.decompress(blob))
        except (zlib.error, ValueError) as exc:
            raise StoreError(f"hub checkpoint is unreadable: {exc}") from exc
        for mac, entry in data.get("plugs", {}).items():
            state = m.from_dict(entry["state"], self._params(mac))
            self.plugs[mac] = _Plug(state, entry["site"])
        self.ingest.load(data.get("ingest", {}))
        for sid, (doc_hex, entry_hex) in data.get("finishes", {}).items():
            doc = codec.ChargeSession.FromString(bytes.fromhex(doc_hex))
            entry = codec.LedgerEntry.FromString(bytes.fromhex(entry_hex)) if entry_hex else None
            self._pending_finishes[sid] = (doc, entry)
        log.info(
            "resumed %d plugs from the checkpoint of %s",
            len(self.plugs),
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(data.get("saved_at_ms", 0) / 1000)),
        )

    def _reconcile(self) -> None:
        """Align the checkpoint with sessions the store knows (started or finished after it)."""
        active = {s.session_id: s for s in self.store.list_sessions(active_only=True, limit=100_000)}
        for plug in self.plugs.values():
            sess = plug.state.session
            if sess is None:
                continue
            doc = self.store.get_session(sess.session_id)
            if doc is not None and doc.status == codec.ChargeSession.STATUS_COMPLETED:
                # Finished and billed after the checkpoint: close it again (no second debit) and switch off.
                self._apply(plug, m.StopRequest(sess.user_id, sess.session_id, "", remote=True))
            active.pop(sess.session_id, None)
        for doc in list(active.values()):
            debit = self.store.get_ledger_entry(doc.session_id)
            if debit is not None:
                # Debited but its document never said COMPLETED: close it, never resume it.
                closed = codec.ChargeSession()
                closed.CopyFrom(doc)
                closed.status = codec.ChargeSession.STATUS_COMPLETED
                closed.cost.CopyFrom(
                    codec.Money(amount_minor=-debit.amount.amount_minor, currency=debit.amount.currency)
                )
                closed.ended_at_ms = closed.ended_at_ms or debit.created_at_ms
                self.store.finish_session(closed, None)
                del active[doc.session_id]
                log.warning("session %s was debited but still ACTIVE; closed it", doc.session_id)
        for doc in active.values():
            if doc.site_id:
                self._plug(doc.plug_mac, doc.site_id)  # a plug the checkpoint does not know yet
            if doc.plug_mac in self.plugs:
                self._recover[doc.plug_mac] = doc
        if self._recover:
            log.info("resuming %d session(s) started after the last checkpoint", len(self._recover))
            for mac in list(self._recover):
                self._try_recover(mac)

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
        event = m.StartRequest(
            doc.session_id,
            doc.user_id,
            self.tariff_for(plug.site_id),
            self.balances.get((doc.user_id, self.tariff_for(plug.site_id).currency), 0),
            doc.request_id,
            start_counter_mwh=doc.start_counter_mwh,
            started_at_ms=doc.started_at_ms,
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

    # ------------------------------------------------------------------ operator helpers

    def new_request_id(self) -> str:
        return uuid.uuid4().hex[:16]


_STATUS_DOC = {
    m.Status.AVAILABLE: 1,
    m.Status.AUTHORIZED: 2,
    m.Status.CHARGING: 3,
    m.Status.SUSPENDED_EV: 4,
    m.Status.SUSPENDED_EVSE: 5,
    m.Status.FINISHING: 6,
    m.Status.FAULTED: 7,
    m.Status.OFFLINE: 8,
    m.Status.UNAVAILABLE: 9,
}
_PLUG_CLASS = {"ev": 1, "ebike": 2, "scooter": 3, "generic": 4}
