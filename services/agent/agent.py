"""The site agent: inventory, one poller per plug, batcher + publisher with spool, command executor.

Theory of operation:

- Plugs are known by MAC. Static addresses are connected (retrying with back-off) and discovery
  sightings add plugs or move them to a new address; a moved plug keeps its poller and its readings.
- One scheduler task polls every plug: each plug's next poll is due at a time rounded up to the
  poll slot (a twentieth of the poll interval, at most 250 ms), the scheduler sleeps until the
  earliest slot and starts every poll due in it as a task; so a site of 200 plugs wakes the process
  about 20 times per interval, not 200 (each wake of an idle process costs more CPU than the poll's
  own Python). A plug has at most one poll in flight, over its own kept connection. A relay command
  does not wait for it: the switch goes over connections of its own (commands to one plug take
  turns on the plug's command lock), so a plug that stalls its status answer delays its readings,
  never a switch. A plug that fails ``offline_after_failures`` polls in a row is logged offline once;
  its polls back off exponentially; its first good poll logs it back once.
- Readings go into one buffer. The flusher takes a batch every ``flush_interval_s`` (or as soon as
  ``max_batch_readings`` are buffered), gives it the next persisted ``batch_seq``, packs and signs it,
  writes it to the spool and then publishes the spool oldest-first, removing each batch once the bus
  has it; so the bus sees batches in ``batch_seq`` order and nothing is lost to a failed publish or a
  stop mid-publish. A failed publish marks the link down (logged once; its return is logged once).
- Command messages are verified and executed by :class:`CommandExecutor`; each yields a
  ``CommandResult`` that rides in the next telemetry batch (spooled like the readings). A result
  waits at most ``result_flush_ms``: then the pending results go in a batch of their own, so the hub
  hears of a switched relay within that bound, not a flush interval later. The command subscription
  is re-established if it fails.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import logging
import math
import random
import signal
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from chargectl import __version__
from chargectl.common import sdnotify
from chargectl.common.clock import Clock, SystemClock
from chargectl.common.codec import Batch, CommandOutcome, InventoryChange, pack_telemetry
from chargectl.common.errors import (
    ChargectlError,
    DeviceError,
    DeviceMismatchError,
    InvalidResponse,
    StoreError,
    TransportError,
)
from chargectl.common.keys import Keyring, SigningKey
from chargectl.common.readings import Reading
from chargectl.common.topics import TELEMETRY_TOPIC, command_subscription, command_topic
from chargectl.services.adapters.bus import Bus, BusMessage, SubscriptionHandle
from chargectl.services.agent.core import BatchBuffer, PlugHealth, next_poll_delay, poll_slot_s, slot_due
from chargectl.services.agent.durable import (
    CommandJournal,
    SequenceCounter,
    Spool,
    SpooledBatch,
    load_epoch,
    new_epoch,
    store_epoch,
)
from chargectl.services.agent.executor import CommandExecutor
from chargectl.services.agent.health import AgentHealth, write_heartbeat
from chargectl.services.agent.metrics import start_agent_health
from chargectl.services.agent.plugs import Connector, Discovery, Plug, PlugSighting
from chargectl.services.agent.settings import AgentSettings

__all__ = ["Agent", "AgentFailed", "PlugStatus"]

log = logging.getLogger("chargectl.agent")

_SHUTDOWN_ROUNDS = 5  # cancel stragglers this many times, ...
_SHUTDOWN_ROUND_S = 1.0  # ... waiting this long each time, before stopping without them
# Command messages handled at once: each holds its plug only (commands to one plug take turns on its
# lock), so a burst (20 starts at once, every session of a site stopping) switches its plugs together
# instead of ten at a time, each wave waiting for the slowest plug of the one before.
COMMANDS_IN_FLIGHT = 64
_SLOT_TOLERANCE_S = 0.001  # a timer may fire this early (the loop's clock resolution, ms epoll timeouts)


def _why(exc: BaseException) -> str:
    """A one-line reason for a log line or a plug's last error."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return "no answer within the request timeout"
    if isinstance(exc, ChargectlError):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def check_reading(reading: Reading) -> Reading:
    """``reading`` if every number in it is finite and fits the wire format, else ``InvalidResponse``."""
    floats = {
        "power_w": reading.power_w,
        "voltage_v": reading.voltage_v,
        "current_a": reading.current_a,
        "temperature_c": reading.temperature_c,
    }
    for name, value in floats.items():
        if value is not None and not (math.isfinite(value) and abs(value) <= _MAX_FLOAT[name]):
            raise InvalidResponse(f"plug {reading.mac}: {name} {value!r} is out of range")
    if not 0 <= reading.energy_mwh < 2**53:
        raise InvalidResponse(f"plug {reading.mac}: energy {reading.energy_mwh} mWh is out of range")
    if reading.uptime_s is not None and not 0 <= reading.uptime_s < 2**32:
        raise InvalidResponse(f"plug {reading.mac}: uptime {reading.uptime_s} s is out of range")
    if not 0 <= reading.errors < 2**32:
        raise InvalidResponse(f"plug {reading.mac}: error flags {reading.errors} are out of range")
    return reading


# Far beyond any plug (a Shelly Pro switches at most a few tens of kW), well inside the wire format.
_MAX_FLOAT = {"power_w": 1e6, "voltage_v": 1e4, "current_a": 1e4, "temperature_c": 1e3}


class AgentFailed(ChargectlError):
    """An agent task ended on its own: the agent flushed what it could and stops, so its unit restarts it."""


@dataclass
class _PlugEntry:
    mac: str
    host: str
    port: int
    client: Plug | None = None
    health: PlugHealth = field(default_factory=PlugHealth)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # commands to this plug take turns on it
    task: asyncio.Task[None] | None = None  # the poll in flight (one at a time)
    polls: int = 0
    scheduled: bool = False  # a next poll is queued


@dataclass(frozen=True)
class PlugStatus:
    mac: str
    host: str
    port: int
    online: bool
    polls: int
    failures: int
    last_error: str


class Agent:
    """One site's agent. ``run()`` for the CLI, ``serve()`` to embed, ``run_once()`` for tests."""

    def __init__(
        self,
        settings: AgentSettings,
        bus: Bus,
        agent_key: SigningKey,
        command_keys: Keyring,
        connector: Connector,
        *,
        discovery: Discovery | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.agent_key = agent_key
        self.clock: Clock = clock or SystemClock()
        self._connector = connector
        self._discovery = discovery
        self._rng = rng or random.Random()
        state = settings.state_path
        try:
            state.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the agent state directory {state}: {exc.strerror or exc}"
            ) from exc
        self.heartbeat_path: Path = state / "agent.heartbeat.json"
        self.seq = SequenceCounter(state / "batch_seq")
        # The instance epoch goes into every batch: the hub dedupes by (site, epoch, batch_seq), so a
        # fresh state directory (a replacement Pi) is accepted from batch_seq 1 at once.
        self.epoch, made = load_epoch(state / "epoch")
        if made:
            log.info("agent instance epoch %016x created in %s", self.epoch, state)
        elif self.seq.reset:
            # The sequence restarted: only a new epoch keeps the hub from dropping it as replays.
            self.epoch = new_epoch()
            store_epoch(state / "epoch", self.epoch)
            log.warning("batch sequence lost; agent instance epoch is now %016x", self.epoch)
        self.spool = Spool(state / "spool", settings.spool_max_bytes)
        if self.spool.seqs():
            self.seq.advance_to(self.spool.seqs()[-1])
        self.journal = CommandJournal(state / "commands.journal")
        try:
            self.journal.prune(self._now_ms())
        except StoreError as exc:
            log.warning("cannot prune the command journal: %s", exc)
        self.executor = CommandExecutor(
            settings.site_id,
            command_keys,
            self.journal,
            settings.command_lifetime_s,
            self._switch,
            lambda mac: mac in self._plugs,
            timeout_s=settings.request_timeout_s * 3,
            max_clock_skew_s=settings.max_clock_skew_s,
            now_ms=self._now_ms,  # an outcome's executed_at_ms: when the plug answered the switch
        )
        self._plugs: dict[str, _PlugEntry] = {}
        self._buffer = BatchBuffer(
            settings.max_batch_readings,
            settings.flush_interval_s,
            self.clock.monotonic(),
            result_flush_s=settings.result_flush_ms / 1000,
        )
        self._flush_wanted = asyncio.Event()
        self._ship_lock = asyncio.Lock()
        self._link_up = True
        self._published = 0
        self._last_publish_ms = 0
        self._commands: SubscriptionHandle | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._poll_slot_s = poll_slot_s(settings.poll_interval_s)
        self._due: list[tuple[float, int, _PlugEntry]] = []  # (slot time, tie-break, plug): a heap
        self._due_order = itertools.count()
        self._polls_wanted = asyncio.Event()  # a poll was queued before the scheduler's next wake
        self._scheduler_wakes_at = math.inf
        self._stopping = asyncio.Event()
        self._serving = False
        self._failure: str | None = None  # why serve() must end non-zero (a task ended on its own)
        self._essential: set[asyncio.Task[Any]] = set()
        self.bad_responses = 0  # plug answers that were not a valid reading (garbage, huge, wrong MAC…)
        self.disk_error = ""  # why the state directory refuses writes ("" while it takes them)
        self._memory: collections.deque[SpooledBatch] = collections.deque()  # batches the disk refused
        self._memory_dropped_batches = 0
        self._memory_dropped_readings = 0
        self._volatile_epoch = False
        self.task_restarts = 0  # plug tasks restarted after an unexpected error
        self.refused_devices = 0  # impostors and MAC mismatches refused
        self.outcomes: list[CommandOutcome] = []  # the most recent command outcomes, newest last

    # ------------------------------------------------------------------ time

    def _now_ms(self) -> int:
        return int(self.clock.now() * 1000)

    # ------------------------------------------------------------------ inventory

    @property
    def plugs(self) -> dict[str, tuple[str, int, bool]]:
        """Known plugs: MAC → (host, port, online)."""
        return {m: (e.host, e.port, e.health.online and e.client is not None) for m, e in self._plugs.items()}

    def plug_status(self, mac: str) -> PlugStatus:
        """How one plug is doing (``KeyError`` if the agent does not know it)."""
        e = self._plugs[mac]
        return PlugStatus(
            e.mac,
            e.host,
            e.port,
            e.client is not None and e.health.online,
            e.polls,
            e.health.failures,
            e.health.last_error,
        )

    def _change(
        self, kind: Literal["added", "moved", "gone"], entry: _PlugEntry, plug: Plug | None = None
    ) -> None:
        self._buffer.add_change(
            InventoryChange(
                mac=entry.mac,
                kind=kind,
                at_ms=self._now_ms(),
                host=entry.host,
                port=entry.port,
                gen=plug.gen if plug else 0,
                model=plug.model if plug else "",
                switchable=plug.switchable if plug else True,
            )
        )

    def _adopt(self, plug: Plug, host: str, port: int) -> _PlugEntry:
        """Register a connected plug under its MAC (a known MAC at a new address is a move)."""
        entry = self._plugs.get(plug.mac)
        if entry is None:
            entry = _PlugEntry(plug.mac, host, port, plug, PlugHealth(self.settings.offline_after_failures))
            self._plugs[plug.mac] = entry
            log.info("plug %s found at %s:%d (gen %d %s)", plug.mac, host, port, plug.gen, plug.model)
            self._change("added", entry, plug)
        elif (entry.host, entry.port) != (host, port):
            old, entry.client = entry.client, plug
            log.info("plug %s moved from %s:%d to %s:%d", plug.mac, entry.host, entry.port, host, port)
            entry.host, entry.port = host, port
            self._change("moved", entry, plug)
            if old is not None and old is not plug:
                self._spawn(old.aclose(), f"close-{plug.mac}")
        elif entry.client is None:
            entry.client = plug
        else:
            self._spawn(plug.aclose(), f"close-{plug.mac}")
        return entry

    async def _connect(self, host: str, port: int, mac: str | None = None) -> Plug:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
        # arrives as the inner call completes, and a poller that lost its cancellation never stops.
        async with asyncio.timeout(self.settings.request_timeout_s * 3):
            return await self._connector(host, port, mac)

    async def _answers_as(self, host: str, port: int, mac: str) -> bool:
        """Whether ``host:port`` answers as plug ``mac`` right now (asked, not remembered: a plug that
        moved a moment ago must not be held to its old address)."""
        try:
            plug = await self._connect(host, port, mac)
        except asyncio.CancelledError:
            raise
        except Exception:
            return False
        with contextlib.suppress(Exception):
            await plug.aclose()
        return True

    def _refuse(self, what: str, *args: object) -> None:
        self.refused_devices += 1
        log.warning(what, *args)

    async def _connect_static(self, host: str, port: int) -> None:
        failures = 0
        while True:
            try:
                plug = await self._connect(host, port)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of one plug is that plug's problem
                failures += 1
                why = _why(exc)
                if failures == self.settings.offline_after_failures:
                    log.warning("configured plug %s:%d does not answer: %s", host, port, why)
                await self.clock.sleep(
                    next_poll_delay(
                        self.settings.poll_interval_s, failures, self.settings.max_backoff_s, 0.1, self._rng
                    )
                )
                continue
            entry = self._adopt(plug, host, port)
            self._start_poller(entry)
            return

    async def _sighted(self, sighting: PlugSighting) -> None:
        entry = self._plugs.get(sighting.mac)
        if sighting.kind == "gone":
            if entry is not None:
                log.info("plug %s no longer announced on mDNS", sighting.mac)
                self._change("gone", entry)
            return
        host, port, mac = sighting.host, sighting.port, sighting.mac
        if entry is not None and (entry.host, entry.port) == (host, port):
            return
        # An address bound to another plug is that plug's while it still answers there as itself.
        for other in list(self._plugs.values()):
            if (
                other.mac != mac
                and (other.host, other.port) == (host, port)
                and await self._answers_as(host, port, other.mac)
            ):
                self._refuse(
                    "refused plug %s at %s:%d: that address is plug %s's, which still answers there",
                    mac,
                    host,
                    port,
                    other.mac,
                )
                return
        try:
            plug = await self._connect(host, port, mac)  # MAC checked before any credential is sent
        except asyncio.CancelledError:
            raise
        except DeviceMismatchError as exc:
            self._refuse("refused plug %s announced at %s:%d: %s", mac, host, port, _why(exc))
            return
        except Exception as exc:  # one bad sighting must not end discovery
            log.warning("plug %s at %s:%d does not answer: %s", mac, host, port, _why(exc))
            return
        if entry is not None and await self._answers_as(entry.host, entry.port, mac):
            # A MAC moves only once its old address stops answering as it: this is an impostor.
            self._refuse(
                "refused impostor at %s:%d claiming to be plug %s, which still answers at %s:%d",
                host,
                port,
                mac,
                entry.host,
                entry.port,
            )
            with contextlib.suppress(Exception):
                await plug.aclose()
            return
        self._start_poller(self._adopt(plug, host, port))

    async def _discover(self) -> None:
        assert self._discovery is not None
        while True:
            try:
                async for sighting in self._discovery():
                    await self._sighted(sighting)
            except asyncio.CancelledError:
                raise
            except (ChargectlError, OSError) as exc:
                log.warning("discovery failed (%s); restarting it", exc)
            await self.clock.sleep(self.settings.poll_interval_s)

    # ------------------------------------------------------------------ polling

    def _start_poller(self, entry: _PlugEntry) -> None:
        # Outside serve() (run_once) plugs are polled by the caller, not by the scheduler.
        if self._serving and not entry.scheduled and (entry.task is None or entry.task.done()):
            # Spread the first polls over one interval so a big site does not poll in bursts.
            self._schedule(entry, self._rng.random() * self.settings.poll_interval_s)

    def _schedule(self, entry: _PlugEntry, delay_s: float) -> None:
        """Queue ``entry``'s next poll ``delay_s`` from now, rounded up to the next poll slot."""
        at = slot_due(self.clock.monotonic(), delay_s, self._poll_slot_s)
        heapq.heappush(self._due, (at, next(self._due_order), entry))
        entry.scheduled = True
        if at < self._scheduler_wakes_at:
            self._polls_wanted.set()

    async def _poll_scheduler(self) -> None:
        """Start each plug's poll when its slot comes: one timer for the site, not one per plug."""
        due = self._due
        while True:
            now = self.clock.monotonic()
            while due and due[0][0] <= now + _SLOT_TOLERANCE_S:
                entry = heapq.heappop(due)[2]
                entry.scheduled = False
                entry.task = self._spawn(self._poll_once(entry), f"poll-{entry.mac}")
            wait_s = due[0][0] - now if due else self.settings.poll_interval_s
            self._scheduler_wakes_at = now + wait_s
            self._polls_wanted.clear()
            sleeper = asyncio.ensure_future(self.clock.sleep(wait_s))
            waker = asyncio.ensure_future(self._polls_wanted.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()

    async def _poll_once(self, entry: _PlugEntry) -> None:
        """One scheduled poll, then the next one queued (interval, or back-off after failures)."""
        s = self.settings
        try:
            await self.poll(entry)
        except Exception as exc:  # supervision: poll() keeps a plug's trouble; this is our own bug
            self.task_restarts += 1
            error = _why(exc)
            log.error("poller of plug %s failed (%s); polling it again after a back-off", entry.mac, error)
            log.debug("poller of plug %s failure", entry.mac, exc_info=exc)
            entry.health.failure(error)
        finally:
            if self._serving and not entry.scheduled:
                self._schedule(
                    entry,
                    next_poll_delay(
                        s.poll_interval_s, entry.health.failures, s.max_backoff_s, s.poll_jitter, self._rng
                    ),
                )

    async def _supervised(self, what: str, make: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``make()``; if it raises, log why and run it again after a back-off, for as long as it takes."""
        failures = 0
        while True:
            try:
                await make()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # supervision: no error type ends a plug's task
                failures += 1
                self.task_restarts += 1
                log.error(
                    "%s failed (%s); restarting it (restart #%d)",
                    what,
                    _why(exc),
                    failures,
                    exc_info=failures == 1,
                )
            s = self.settings
            await self.clock.sleep(
                next_poll_delay(s.poll_interval_s, failures, s.max_backoff_s, 0.1, self._rng)
            )

    async def poll(self, entry: _PlugEntry) -> Reading | None:
        """One poll of one plug; logs offline/recovered transitions; buffers the reading."""
        try:
            # No plug lock: a command to this plug runs beside the poll, on connections of its own.
            client = entry.client
            if client is None:
                client = await self._connect(entry.host, entry.port, entry.mac)
                if client.mac != entry.mac:
                    await client.aclose()
                    raise DeviceError(f"{entry.host}:{entry.port} is now plug {client.mac}")
                entry.client = client
            async with asyncio.timeout(self.settings.request_timeout_s):
                reading = check_reading(await client.read())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a plug's bad answer is that plug's problem
            error = _why(exc)
            first = entry.health.failures == 0
            if isinstance(exc, InvalidResponse):
                self.bad_responses += 1
                if first:
                    log.warning(
                        "plug %s at %s:%d gave a bad answer, backing off: %s",
                        entry.mac,
                        entry.host,
                        entry.port,
                        error,
                    )
            elif not isinstance(exc, DeviceError | TimeoutError) and first:
                log.error("plug %s poll failed unexpectedly: %s", entry.mac, error, exc_info=exc)
            if entry.health.failure(error) == "offline":
                log.warning("plug %s at %s:%d is offline: %s", entry.mac, entry.host, entry.port, error)
            else:
                log.debug("plug %s poll failed: %s", entry.mac, error)
            return None
        entry.polls += 1
        if entry.health.success() == "recovered":
            log.info("plug %s at %s:%d is back online", entry.mac, entry.host, entry.port)
        if self._buffer.add(reading):
            self._flush_wanted.set()
        return reading

    async def _switch(self, mac: str, on: bool, auto_off_s: int | None) -> bool:
        entry = self._plugs[mac]
        async with entry.lock:
            if entry.client is None:
                raise DeviceError(f"plug {mac} is not connected")
            return await entry.client.set_relay(on, auto_off_s)

    # ------------------------------------------------------------------ batching and publishing

    def _attributes(self, attrs: dict[str, str]) -> dict[str, str]:
        attrs["shard"] = str(self.settings.shard)
        return attrs

    def _next_seq(self) -> int:
        try:
            return self.seq.next()
        except StoreError as exc:
            self._disk_trouble(exc)
            if not self._volatile_epoch:
                # Numbers not on disk could be handed out again after a restart; under an epoch that
                # is never persisted they cannot collide with anything the hub has seen.
                self._volatile_epoch = True
                self.epoch = new_epoch()
                log.warning("batch sequence not persisted; numbering under volatile epoch %016x", self.epoch)
            return self.seq.next_volatile()

    def _disk_trouble(self, exc: Exception) -> None:
        if not self.disk_error:
            log.error(
                "agent state directory refuses writes (%s); holding batches in memory (up to %d bytes) "
                "and publishing them straight to the bus",
                exc,
                self.settings.memory_buffer_max_bytes,
            )
        self.disk_error = str(exc)

    def _disk_ok(self) -> None:
        if self.disk_error:
            log.info("agent state directory writable again; %d batches in memory", len(self._memory))
        self.disk_error = ""

    def _hold(self, batch: SpooledBatch) -> None:
        """Keep ``batch`` in the bounded memory buffer (oldest dropped, counted) when the disk refuses it."""
        self._memory.append(batch)
        limit = self.settings.memory_buffer_max_bytes
        while len(self._memory) > 1 and sum(len(b.data) for b in self._memory) > limit:
            oldest = self._memory.popleft()
            self._memory_dropped_batches += 1
            self._memory_dropped_readings += oldest.readings
            log.warning(
                "memory buffer full (%d bytes max): dropped batch %d with %d readings",
                limit,
                oldest.seq,
                oldest.readings,
            )

    def _store(self, batch: SpooledBatch) -> None:
        """Write ``batch`` ahead to the spool, or hold it in memory if the disk refuses."""
        try:
            self.spool.put(batch)
        except StoreError as exc:
            self._disk_trouble(exc)
            self._hold(batch)
            return
        self._disk_ok()

    def _respool(self) -> None:
        """Move batches held in memory back to the spool once the disk takes writes again."""
        while self._memory:
            try:
                self.spool.put(self._memory[0])
            except StoreError as exc:
                self._disk_trouble(exc)
                return
            self._memory.popleft()
            self._disk_ok()

    def _pack(
        self, readings: list[Reading], inventory: list[InventoryChange], results: list[CommandOutcome]
    ) -> SpooledBatch:
        seq = self._next_seq()
        batch = Batch(
            site_id=self.settings.site_id,
            batch_seq=seq,
            readings=tuple(readings),
            inventory=tuple(inventory),
            created_at_ms=self._now_ms(),
            agent_version=__version__,
            epoch=self.epoch,
            results=tuple(results),
        )
        data, attrs = pack_telemetry(batch, self.agent_key, self.settings.encoding)
        return SpooledBatch(seq, data, self._attributes(attrs), len(readings))

    def _link(self, up: bool, error: str = "") -> None:
        if up and not self._link_up:
            log.info("telemetry link restored; %d spooled batches to replay", len(self.spool))
        elif not up and self._link_up:
            log.warning("telemetry link down (%s); spooling batches in %s", error, self.spool.directory)
        self._link_up = up

    async def _publish(self, batch: SpooledBatch) -> bool:
        try:
            await self.bus.publish(TELEMETRY_TOPIC, batch.data, batch.attributes)
        except TransportError as exc:
            self._link(False, str(exc))
            return False
        self._link(True)
        self._published += 1
        self._last_publish_ms = self._now_ms()
        return True

    def _forget(self, seq: int) -> None:
        try:
            self.spool.remove(seq)
        except StoreError as exc:
            self._disk_trouble(exc)

    async def _drain(self) -> None:
        """Publish spooled and memory-held batches in ``batch_seq`` order, removing each once sent."""
        if self._memory:
            self._respool()
        pending: list[tuple[int, SpooledBatch | None]] = [(seq, None) for seq in self.spool.seqs()]
        pending += [(b.seq, b) for b in self._memory]
        for seq, held in sorted(pending, key=lambda p: p[0]):
            batch = held
            if batch is None:
                try:
                    batch = self.spool.get(seq)
                except StoreError as exc:
                    log.error("unreadable spooled batch %d set aside: %s", seq, exc)
                    self.spool.set_aside(seq, str(exc))
                    continue
            if not await self._publish(batch):
                return
            if held is not None:
                self._memory.remove(held)
            else:
                self._forget(seq)

    @property
    def _unshipped(self) -> int:
        return len(self.spool) + len(self._memory)

    async def flush(self, *, final: bool = False, results_only: bool = False) -> int:
        """Pack what is buffered into batches and ship them (spool first when anything is spooled);
        ``results_only``: just the pending command results, in one batch."""
        shipped = 0
        async with self._ship_lock:
            # Write-ahead: a batch is on disk before its publish starts, so neither a failed publish
            # nor a stop in the middle of one can lose it (a replay after an ambiguous publish is a
            # duplicate batch_seq, which the hub drops).
            if results_only and self._buffer.results:
                self._store(self._pack([], [], self._buffer.take_results()))
                shipped += 1
            while not results_only and not self._buffer.empty:
                readings, inventory, results = self._buffer.take(self.clock.monotonic())
                self._store(self._pack(readings, inventory, results))
                shipped += 1
            if self._unshipped and not (final and not self._link_up):  # a dead link must not stall a stop
                await self._drain()
            if final and self._memory:
                self._respool()
                if self._memory:
                    lost = sum(b.readings for b in self._memory)
                    log.error(
                        "stopping with %d batches (%d readings) the disk refused and the bus did not take",
                        len(self._memory),
                        lost,
                    )
        return shipped

    async def _flush_loop(self) -> None:
        while True:
            wait_s = max(0.0, self._buffer.flush_at() - self.clock.monotonic())
            if self._buffer.empty:
                wait_s = self.settings.flush_interval_s
            sleeper = asyncio.ensure_future(self.clock.sleep(wait_s))
            waker = asyncio.ensure_future(self._flush_wanted.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()
            self._flush_wanted.clear()
            now = self.clock.monotonic()
            if self._buffer.due(now):
                await self.flush()
            elif self._buffer.results_due(now):
                await self.flush(results_only=True)
            elif self._buffer.empty:
                self._buffer.started_at = now
                if self._unshipped:
                    async with self._ship_lock:
                        await self._drain()

    # ------------------------------------------------------------------ commands

    async def handle_command(self, msg: BusMessage) -> bool:
        """Bus handler for the command subscription: execute or refuse, then report; always acks.

        Each outcome rides in the next telemetry batch, or alone ``result_flush_ms`` from now.
        A site lease that renewed every plug reports nothing."""
        outcomes = await self.executor.handle_many(msg.data, self._now_ms())
        for outcome in outcomes:
            self.outcomes = [*self.outcomes[-99:], outcome]
            self._buffer.add_result(outcome, self.clock.monotonic())
        if outcomes:
            self._flush_wanted.set()  # the flusher re-reads its deadline
        return True

    async def _ensure_resources(self) -> None:
        site = self.settings.site_id
        try:
            await self.bus.ensure_topic(TELEMETRY_TOPIC)
            await self.bus.ensure_topic(command_topic(site))
            await self.bus.ensure_subscription(command_subscription(site), command_topic(site))
        except TransportError as exc:
            log.debug("could not ensure bus resources: %s", exc)

    async def _command_loop(self) -> None:
        failures = 0
        check_s = min(1.0, self.settings.poll_interval_s)
        while True:
            if self.settings.ensure_resources:
                await self._ensure_resources()
            error: BaseException | None = None
            try:
                self._commands = await self.bus.subscribe(
                    command_subscription(self.settings.site_id),
                    self.handle_command,
                    max_messages=COMMANDS_IN_FLIGHT,
                )
                while self._commands.running:
                    await self.clock.sleep(check_s)
                    if failures and self._commands.running:
                        # Pub/Sub reports a missing subscription only after the stream opened, so
                        # "restored" waits until the stream has survived one check.
                        log.info("command subscription restored")
                        failures = 0
                error = self._commands.error
            except TransportError as exc:
                error = exc
            if self._commands is not None:
                await self._commands.stop()
                self._commands = None
            failures += 1
            if failures == 1:
                log.warning("command subscription failed (%s); retrying", error)
            else:
                log.debug("command subscription failed again: %s", error)
            await self.clock.sleep(
                next_poll_delay(1.0, failures, self.settings.max_backoff_s, 0.1, self._rng)
            )

    # ------------------------------------------------------------------ health

    def health(self) -> AgentHealth:
        plugs = self._plugs.values()
        return AgentHealth(
            site_id=self.settings.site_id,
            at_ms=self._now_ms(),
            plugs_known=len(self._plugs),
            plugs_online=sum(1 for e in plugs if e.client is not None and e.health.online),
            link_up=self._link_up,
            commands_subscribed=self._commands is not None and self._commands.running,
            batch_seq=self.seq.last,
            spooled_batches=len(self.spool),
            spooled_bytes=self.spool.size_bytes,
            dropped_batches=self.spool.dropped_batches + self._memory_dropped_batches,
            dropped_readings=self.spool.dropped_readings + self._memory_dropped_readings,
            buffered_readings=len(self._buffer),
            published_batches=self._published,
            last_publish_ms=self._last_publish_ms,
            bad_responses=self.bad_responses,
            task_restarts=self.task_restarts,
            epoch=self.epoch,
            disk_error=self.disk_error or self.executor.journal_error,
            memory_batches=len(self._memory),
            refused_devices=self.refused_devices,
        )

    def write_heartbeat(self) -> AgentHealth:
        health = self.health()
        write_heartbeat(self.heartbeat_path, health)
        return health

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                self.journal.prune(self._now_ms())  # also between commands, so it never outgrows them
            except StoreError as exc:
                log.warning("cannot prune the command journal: %s", exc)
            try:
                self.write_heartbeat()
            except StoreError as exc:
                log.error("cannot write heartbeat: %s", exc)
            sdnotify.watchdog()
            await self.clock.sleep(self.settings.heartbeat_interval_s)

    # ------------------------------------------------------------------ lifecycle

    def _spawn(
        self, coro: Coroutine[Any, Any, Any], name: str, *, essential: bool = False
    ) -> asyncio.Task[Any]:
        """Start a task; an ``essential`` one runs until the agent stops, so its ending stops the agent."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        if essential:
            self._essential.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)
        essential = task in self._essential
        self._essential.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if not essential:
            # Plug tasks are supervised and never raise; what is left (closing a client) is harmless.
            if exc is not None:
                log.warning("agent task %s failed: %s", task.get_name(), _why(exc))
            return
        if exc is None and not self._serving:
            return
        why = f"crashed ({_why(exc)})" if exc is not None else "ended on its own"
        if self._failure is None:
            self._failure = f"agent task {task.get_name()} {why}"
        log.error(
            "agent task %s %s; flushing and stopping so the service restarts",
            task.get_name(),
            why,
            exc_info=exc,
        )
        self._stopping.set()

    async def serve(self, ready: Callable[[], Awaitable[None] | None] | None = None) -> None:
        """Run until cancelled (or ``stop()``); on the way out, flush what is buffered (spool if offline)."""
        log.info(
            "agent for site %s starting: %d configured plugs, discovery %s, %d batches spooled",
            self.settings.site_id,
            len(self.settings.plugs),
            "on" if self._discovery else "off",
            len(self.spool),
        )
        self._stopping.clear()
        self._failure = None
        self._serving = True
        for address in self.settings.plugs:
            host, port = address.host, address.port
            self._spawn(
                self._supervised(
                    f"connecting configured plug {host}:{port}",
                    lambda h=host, p=port: self._connect_static(h, p),  # type: ignore[misc]
                ),
                f"connect-{host}:{port}",
            )
        if self._discovery is not None:
            self._spawn(self._discover(), "discovery", essential=True)
        self._spawn(self._flush_loop(), "flush", essential=True)
        self._spawn(self._poll_scheduler(), "polls", essential=True)
        self._spawn(self._command_loop(), "commands", essential=True)
        self._spawn(self._heartbeat_loop(), "heartbeat", essential=True)
        sdnotify.ready()
        try:
            s = self.settings
            if s.health_port:
                self.health_server = await start_agent_health(
                    s.site_id, self.health, s.health_host, s.health_port
                )
            if ready is not None:
                result = ready()
                if result is not None:
                    await result
            await self._stopping.wait()
        finally:
            await self._shutdown()
        if self._failure is not None:
            raise AgentFailed(self._failure)

    def stop(self) -> None:
        """Ask ``serve()`` to return (thread-unsafe; call from the agent's loop)."""
        self._stopping.set()

    async def _cancel_tasks(self) -> None:
        """Cancel every task and wait for each to end, re-cancelling stragglers; never waits unboundedly."""
        tasks = list(self._tasks)
        for _ in range(_SHUTDOWN_ROUNDS):
            pending = [t for t in tasks if not t.done()]
            if not pending:
                break
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=_SHUTDOWN_ROUND_S)
        stuck = sorted(t.get_name() for t in tasks if not t.done())
        if stuck:
            log.error("agent tasks %s ignored cancellation; stopping without them", ", ".join(stuck))
        self._tasks.clear()

    async def _shutdown(self) -> None:
        self._serving = False
        server = vars(self).pop("health_server", None)  # set by serve() when [agent] health_port is
        if server is not None:
            await server.stop()
        await self._cancel_tasks()
        self._due.clear()
        self._scheduler_wakes_at = math.inf
        for entry in self._plugs.values():
            entry.scheduled = False
        if self._commands is not None:
            await self._commands.stop()
            self._commands = None
        try:
            await asyncio.shield(self.flush(final=True))
        except (ChargectlError, asyncio.CancelledError) as exc:
            log.error("final flush failed: %s", exc)
        for entry in self._plugs.values():
            if entry.client is not None:
                with contextlib.suppress(Exception):
                    await entry.client.aclose()
                entry.client = None
            entry.task = None
        with contextlib.suppress(StoreError):
            self.write_heartbeat()
        log.info("agent for site %s stopped; %d batches spooled", self.settings.site_id, len(self.spool))

    async def run_once(self) -> AgentHealth:
        """Connect configured plugs, poll every plug once, flush and replay, write the heartbeat."""
        for address in self.settings.plugs:
            try:
                plug = await self._connect(address.host, address.port)
            except Exception as exc:  # one plug's failure is that plug's problem
                log.warning(
                    "configured plug %s:%d does not answer: %s", address.host, address.port, _why(exc)
                )
                continue
            self._adopt(plug, address.host, address.port)
        await asyncio.gather(*(self.poll(entry) for entry in self._plugs.values()))
        await self.flush()
        return self.write_heartbeat()

    async def aclose(self) -> None:
        """Close plug clients opened by ``run_once``."""
        for entry in self._plugs.values():
            if entry.client is not None:
                with contextlib.suppress(Exception):
                    await entry.client.aclose()
                entry.client = None

    def run(self, alongside: Callable[[Agent], Coroutine[Any, Any, None]] | None = None) -> None:
        """Serve until SIGINT/SIGTERM (for the CLI and systemd); ``alongside`` runs next to it (a live view)."""

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.stop)
            extra = asyncio.create_task(alongside(self)) if alongside is not None else None
            try:
                await self.serve()
            finally:
                if extra is not None:
                    extra.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await extra
                await self.bus.close()

        asyncio.run(main())
