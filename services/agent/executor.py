"""Relay commands: verify, refuse with a reason, or execute at most once; every command gets an outcome.

Checks, in order (each refusal is a :class:`RefusalReason`): the envelope parses and names a known
schema and encoding (``malformed``); it is signed (``bad_signature``) by one of the site's command keys
(``unknown_key``), the signature holds (``bad_signature``) and the key is valid now (``unknown_key``);
the payload decodes (``malformed``); the command is for this site and signed by this site's key
(``wrong_site``); it was not issued more than ``max_clock_skew_s`` in our future (``clock_skew``); it
has an expiry (``bad_expiry``: missing, zero, or further ahead than the command lifetime allows) that
has not passed (``expired``); its id has not been executed before (``duplicate``); and its plug is one
we know (``unknown_plug``). The id is journalled durably *before* the relay is touched, so a crash
mid-command can never execute it twice; if the journal cannot be written, an "on" is refused
(``journal_error``) while an "off" (harmless to repeat) still runs. Likewise an "off" refused only by
this Pi's clock (``clock_skew``, ``expired``, ``bad_expiry`` with an expiry) still runs unless the plug
has executed a newer command since (by the hub's times): a wrong clock must not keep a relay on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from google.protobuf.message import DecodeError

from chargectl.common import codec
from chargectl.common.codec import Command, CommandOutcome
from chargectl.common.errors import CodecError, DeviceError, StoreError
from chargectl.common.keys import Keyring
from chargectl.gen.v1 import commands_pb2
from chargectl.services.agent.durable import CommandJournal

__all__ = ["REASONS", "CommandExecutor", "Refusal", "RefusalReason", "verify_command"]

log = logging.getLogger("chargectl.agent")

_MAX_COMMAND_BYTES = 64 * 1024


class RefusalReason(StrEnum):
    """Every ``CommandOutcome.reason`` the agent reports (``executed`` is the one success)."""

    EXECUTED = "executed"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    MALFORMED = "malformed"
    EXPIRED = "expired"
    BAD_EXPIRY = "bad_expiry"
    CLOCK_SKEW = "clock_skew"
    WRONG_SITE = "wrong_site"
    DUPLICATE = "duplicate"
    UNKNOWN_PLUG = "unknown_plug"
    DEVICE_ERROR = "device_error"
    JOURNAL_ERROR = "journal_error"


REASONS = tuple(r.value for r in RefusalReason)


# Refusals that say only that this Pi's clock disagrees with the command's times.
_CLOCK_REASONS = frozenset({RefusalReason.CLOCK_SKEW, RefusalReason.EXPIRED, RefusalReason.BAD_EXPIRY})


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: RefusalReason
    detail: str
    command: Command | None = None


def _open(data: bytes, keyring: Keyring, now_ms: int) -> Command | Refusal:
    """The signed command in ``data``, each failure classified by the step that failed."""
    R = RefusalReason
    env = commands_pb2.Envelope()
    try:
        env.ParseFromString(data)
    except DecodeError as exc:
        return Refusal(R.MALFORMED, f"not an Envelope: {exc}")
    if not env.key_id or len(env.signature) != 64:
        return Refusal(R.BAD_SIGNATURE, "envelope is unsigned or its signature is malformed")
    if env.schema != codec.SCHEMA_COMMAND or env.encoding not in codec.ENCODINGS:
        return Refusal(
            R.MALFORMED, f"not a command envelope (schema {env.schema!r}, encoding {env.encoding!r})"
        )
    if env.key_id not in keyring:
        return Refusal(R.UNKNOWN_KEY, f"signed by unknown key {env.key_id!r}")
    try:  # bounded before the signature check: an inflating payload is refused unread
        codec.decompress(env.payload, env.encoding, _MAX_COMMAND_BYTES)
    except CodecError as exc:
        return Refusal(R.MALFORMED, str(exc))
    try:  # the key is known and the payload inflates: only the signature can fail here
        codec.open_envelope(data, keyring, codec.SCHEMA_COMMAND, None, _MAX_COMMAND_BYTES)
    except CodecError as exc:
        return Refusal(R.BAD_SIGNATURE, str(exc))
    try:  # the signature holds: only the key's validity window can fail here
        opened = codec.open_envelope(data, keyring, codec.SCHEMA_COMMAND, now_ms, _MAX_COMMAND_BYTES)
    except CodecError as exc:
        return Refusal(R.UNKNOWN_KEY, str(exc))
    try:
        cmd = codec.decode_command(opened.payload)
    except CodecError as exc:
        return Refusal(R.MALFORMED, str(exc))
    if cmd.site_id != opened.site_id:
        return Refusal(
            R.WRONG_SITE,
            f"command for site {cmd.site_id!r} is signed by a key of site {opened.site_id!r}",
            cmd,
        )
    return cmd


def verify_command(
    data: bytes,
    keyring: Keyring,
    site_id: str,
    now_ms: int,
    journal: CommandJournal,
    *,
    max_clock_skew_ms: int = 120_000,
    lifetime_ms: int = 600_000,
) -> Command | Refusal:
    """The command in ``data`` if it may be executed now, else why not (plug existence checked later)."""
    R = RefusalReason
    checked = _open(data, keyring, now_ms)
    if isinstance(checked, Refusal):
        return checked
    cmd = checked
    if cmd.site_id != site_id:
        return Refusal(R.WRONG_SITE, f"command is for site {cmd.site_id!r}, this is {site_id!r}", cmd)
    if cmd.issued_at_ms > now_ms + max_clock_skew_ms:
        ahead_s = (cmd.issued_at_ms - now_ms) / 1000
        return Refusal(
            R.CLOCK_SKEW,
            f"command issued {ahead_s:.0f} s in this agent's future (limit {max_clock_skew_ms / 1000:.0f} s)",
            cmd,
        )
    if cmd.expires_at_ms <= 0:
        return Refusal(R.BAD_EXPIRY, "command has no expiry", cmd)
    if now_ms > cmd.expires_at_ms:
        return Refusal(R.EXPIRED, f"command expired {now_ms - cmd.expires_at_ms} ms ago", cmd)
    if cmd.expires_at_ms > now_ms + lifetime_ms + max_clock_skew_ms:
        # Its id would have to be remembered that long: refuse rather than grow the journal.
        return Refusal(
            R.BAD_EXPIRY, f"command expires {(cmd.expires_at_ms - now_ms) / 1000:.0f} s ahead", cmd
        )
    if cmd.command_id in journal:
        return Refusal(R.DUPLICATE, f"command {cmd.command_id} was already executed", cmd)
    return cmd


class CommandExecutor:
    """Turns command messages into relay switches and ``CommandOutcome``s."""

    def __init__(
        self,
        site_id: str,
        keyring: Keyring,
        journal: CommandJournal,
        lifetime_s: float,
        switch: Callable[[str, bool, int | None], Awaitable[bool]],
        knows_plug: Callable[[str], bool],
        timeout_s: float = 10.0,
        max_clock_skew_s: float = 120.0,
        now_ms: Callable[[], int] | None = None,
    ) -> None:
        self.site_id = site_id
        # The clock an executed command's ``executed_at_ms`` is read from once the plug has answered
        # (None: the time the command was handed in, as for a refusal).
        self._done_ms = now_ms
        self.keyring = keyring
        self.journal = journal
        self.lifetime_ms = int(lifetime_s * 1000)
        self._switch = switch
        self._knows_plug = knows_plug
        self.journal_error = ""  # why the last journal write failed ("" once one succeeds)
        self.timeout_s = timeout_s
        self.max_clock_skew_ms = int(max_clock_skew_s * 1000)
        # The newest per-plug command executed (issued_at_ms, on): a lease issued before an "off" the
        # plug has since executed never switches it back on (leases and commands may arrive out of order).
        self.last_command: dict[str, tuple[int, bool]] = {}
        self.clock_overrides = 0  # "off" commands run although this Pi's clock called them stale or early

    def _refused(self, refusal: Refusal, now_ms: int) -> CommandOutcome:
        cmd = refusal.command
        log.warning(
            "refused command %s: %s (%s)", cmd.command_id if cmd else "?", refusal.reason, refusal.detail
        )
        return CommandOutcome(
            command_id=cmd.command_id if cmd else "",
            site_id=self.site_id,
            plug_mac=cmd.plug_mac if cmd else "",
            ok=False,
            reason=refusal.reason.value,
            executed_at_ms=now_ms,
            error=refusal.detail,
            session_id=cmd.session_id if cmd else "",
        )

    async def handle_many(self, data: bytes, now_ms: int) -> list[CommandOutcome]:
        """Verify and (maybe) execute one command message or site lease; never raises for a bad one.

        A command gives one outcome. A site lease re-arms every listed plug's flip-back timer and
        gives an outcome only for each plug it could not renew (nothing to report when all renewed)."""
        checked = self._check(data, now_ms)
        if isinstance(checked, Refusal):
            return [self._refused(checked, now_ms)]
        if checked.leased:
            return await self._renew(checked, now_ms)
        return [await self._execute(checked, now_ms)]

    async def handle(self, data: bytes, now_ms: int) -> CommandOutcome:
        """Verify and (maybe) execute one command message; never raises for a bad command."""
        checked = self._check(data, now_ms)
        if isinstance(checked, Refusal):
            return self._refused(checked, now_ms)
        if checked.leased:
            failed = await self._renew(checked, now_ms)
            return (
                failed[0]
                if failed
                else CommandOutcome(
                    command_id=checked.command_id,
                    site_id=self.site_id,
                    plug_mac="",
                    ok=True,
                    reason=RefusalReason.EXECUTED.value,
                    executed_at_ms=now_ms,
                    relay_on=True,
                )
            )
        return await self._execute(checked, now_ms)

    def _check(self, data: bytes, now_ms: int) -> Command | Refusal:
        try:
            self.journal.prune(now_ms)  # continuously: every id is kept only as long as it could replay
        except StoreError as exc:
            log.warning("cannot prune the command journal: %s", exc)
        checked = verify_command(
            data,
            self.keyring,
            self.site_id,
            now_ms,
            self.journal,
            max_clock_skew_ms=self.max_clock_skew_ms,
            lifetime_ms=self.lifetime_ms,
        )
        if isinstance(checked, Refusal) and self._off_despite_clock(checked):
            assert checked.command is not None
            log.warning(
                "command %s: switching %s off although %s (this Pi's clock disagrees with the hub's)",
                checked.command.command_id,
                checked.command.plug_mac,
                checked.detail,
            )
            self.clock_overrides += 1
            return checked.command
        return checked

    def _off_despite_clock(self, refusal: Refusal) -> bool:
        """Whether a signed "off" refused only because of this Pi's clock runs anyway.

        Off is the safe state: a Pi whose clock lags or leads the hub's (before its first time sync, after
        a step) must not leave a relay on, and a driver drawing energy, after their session ended. The
        order of commands is the hub's own clock, not ours: an "off" older than the newest command this
        plug executed (a later session's "on") is stale and stays refused, as does a replayed id."""
        cmd = refusal.command
        if refusal.reason not in _CLOCK_REASONS or cmd is None or cmd.on or cmd.leased:
            return False
        if cmd.expires_at_ms <= 0 or cmd.site_id != self.site_id or cmd.command_id in self.journal:
            return False
        newest = self.last_command.get(cmd.plug_mac)
        return newest is None or cmd.issued_at_ms >= newest[0]

    def _journal(self, cmd: Command, now_ms: int) -> str:
        """Record the id before touching a relay; the error ("" when written)."""
        keep_until = max(cmd.expires_at_ms, now_ms) + self.lifetime_ms
        try:
            self.journal.record(cmd.command_id, keep_until)
        except StoreError as exc:
            self.journal_error = str(exc)
            return str(exc)
        self.journal_error = ""
        return ""

    async def _renew(self, lease: Command, now_ms: int) -> list[CommandOutcome]:
        """Re-arm each leased plug's flip-back timer ("on" with its own auto_off_s), concurrently."""
        error = self._journal(lease, now_ms)
        if error:  # a redelivery could switch a plug back on after an "off": refuse, as for "on"
            return [self._refused(Refusal(RefusalReason.JOURNAL_ERROR, error, lease), now_ms)]

        async def renew(entry: codec.LeasedPlug) -> CommandOutcome | None:
            def failed(reason: RefusalReason, detail: str) -> CommandOutcome:
                log.warning("lease %s: %s not renewed: %s", lease.command_id, entry.plug_mac, detail)
                return CommandOutcome(
                    command_id=lease.command_id,
                    site_id=self.site_id,
                    plug_mac=entry.plug_mac,
                    ok=False,
                    reason=reason.value,
                    executed_at_ms=now_ms,
                    error=detail,
                    session_id=entry.session_id,
                )

            if not self._knows_plug(entry.plug_mac):
                return failed(RefusalReason.UNKNOWN_PLUG, f"no plug {entry.plug_mac} at this site")
            issued, on = self.last_command.get(entry.plug_mac, (0, True))
            if not on and issued >= lease.issued_at_ms:
                log.info("lease %s: %s was switched off after it; left off", lease.command_id, entry.plug_mac)
                return None
            try:
                async with asyncio.timeout(self.timeout_s):
                    observed = await self._switch(entry.plug_mac, True, int(entry.auto_off_s))
            except (DeviceError, TimeoutError) as exc:
                return failed(RefusalReason.DEVICE_ERROR, str(exc) or type(exc).__name__)
            if not observed:
                return failed(RefusalReason.DEVICE_ERROR, "relay did not reach the commanded state")
            return None

        results = await asyncio.gather(*(renew(e) for e in lease.leased))
        log.debug("lease %s: %d plugs renewed", lease.command_id, sum(r is None for r in results))
        return [r for r in results if r is not None]

    async def _execute(self, cmd: Command, now_ms: int) -> CommandOutcome:
        if not self._knows_plug(cmd.plug_mac):
            return self._refused(
                Refusal(RefusalReason.UNKNOWN_PLUG, f"no plug {cmd.plug_mac} at this site", cmd), now_ms
            )
        keep_until = max(cmd.expires_at_ms, now_ms) + self.lifetime_ms
        try:
            self.journal.record(cmd.command_id, keep_until)
        except StoreError as exc:
            self.journal_error = str(exc)
            if cmd.on:
                # Without a durable record a redelivery could switch it on twice: refuse.
                return self._refused(Refusal(RefusalReason.JOURNAL_ERROR, str(exc), cmd), now_ms)
            log.warning("command %s: journal unwritable (%s); switching off anyway", cmd.command_id, exc)
        else:
            self.journal_error = ""
        newest = self.last_command.get(cmd.plug_mac)
        if newest is None or cmd.issued_at_ms >= newest[0]:
            self.last_command[cmd.plug_mac] = (cmd.issued_at_ms, cmd.on)
        auto_off = int(cmd.auto_off_s) if cmd.on and cmd.auto_off_s > 0 else None
        try:
            async with asyncio.timeout(self.timeout_s):  # not wait_for: it can swallow a cancellation
                observed = await self._switch(cmd.plug_mac, cmd.on, auto_off)
        except (DeviceError, TimeoutError) as exc:
            if self._done_ms is not None:
                now_ms = self._done_ms()  # when the plug failed it
            detail = str(exc) or type(exc).__name__
            log.warning("command %s on %s failed: %s", cmd.command_id, cmd.plug_mac, detail)
            return CommandOutcome(
                command_id=cmd.command_id,
                site_id=self.site_id,
                plug_mac=cmd.plug_mac,
                ok=False,
                reason=RefusalReason.DEVICE_ERROR.value,
                executed_at_ms=now_ms,
                error=detail,
                session_id=cmd.session_id,
            )
        if self._done_ms is not None:
            now_ms = self._done_ms()  # executed: the plug has answered with its relay's state
        log.info(
            "command %s: %s %s%s -> relay %s",
            cmd.command_id,
            cmd.plug_mac,
            "on" if cmd.on else "off",
            f" (auto-off {cmd.auto_off_s}s)" if auto_off else "",
            "on" if observed else "off",
        )
        return CommandOutcome(
            command_id=cmd.command_id,
            site_id=self.site_id,
            plug_mac=cmd.plug_mac,
            ok=observed == cmd.on,
            reason=RefusalReason.EXECUTED.value,
            executed_at_ms=now_ms,
            relay_on=observed,
            error="" if observed == cmd.on else "relay did not reach the commanded state",
            session_id=cmd.session_id,
        )
