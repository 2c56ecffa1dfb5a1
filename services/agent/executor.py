"""Relay commands: verify, refuse with a reason, or execute at most once; every command gets an outcome.

Checks, in order: the envelope parses (``malformed``), its key is one of the site's command keys
(``unknown_key``) and the signature holds (``bad_signature``), the command is for this site
(``wrong_site``), it has not expired (``expired``), its id has not been executed before
(``duplicate``), and its plug is one we know (``unknown_plug``). The id is journalled durably
*before* the relay is touched, so a crash mid-command can never execute it twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from chargectl.common.codec import Command, CommandOutcome, unpack_command
from chargectl.common.errors import CodecError, DeviceError
from chargectl.common.keys import Keyring
from chargectl.services.agent.durable import CommandJournal

__all__ = ["REASONS", "CommandExecutor", "Refusal", "classify_codec_error", "verify_command"]

log = logging.getLogger("chargectl.agent")

REASONS = (
    "executed",
    "bad_signature",
    "unknown_key",
    "malformed",
    "expired",
    "wrong_site",
    "duplicate",
    "unknown_plug",
    "device_error",
)


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str
    detail: str
    command: Command | None = None


def classify_codec_error(exc: CodecError) -> str:
    """Which refusal reason a codec failure on a command envelope is (codec names each case)."""
    text = str(exc)
    if text.startswith(("unknown signing key", "signing key ")):  # unknown, not yet valid, or retired
        return "unknown_key"
    if text.startswith("bad signature") or text.startswith("envelope is unsigned"):
        return "bad_signature"
    if text.startswith("command for site"):
        return "wrong_site"
    return "malformed"


def verify_command(
    data: bytes, keyring: Keyring, site_id: str, now_ms: int, journal: CommandJournal
) -> Command | Refusal:
    """The command in ``data`` if it may be executed now, else why not (plug existence checked later)."""
    try:
        cmd = unpack_command(data, keyring, now_ms)
    except CodecError as exc:
        return Refusal(classify_codec_error(exc), str(exc))
    if cmd.site_id != site_id:
        return Refusal("wrong_site", f"command is for site {cmd.site_id!r}, this is {site_id!r}", cmd)
    if cmd.expires_at_ms and now_ms > cmd.expires_at_ms:
        return Refusal("expired", f"command expired {now_ms - cmd.expires_at_ms} ms ago", cmd)
    if cmd.command_id in journal:
        return Refusal("duplicate", f"command {cmd.command_id} was already executed", cmd)
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
    ) -> None:
        self.site_id = site_id
        self.keyring = keyring
        self.journal = journal
        self.lifetime_ms = int(lifetime_s * 1000)
        self._switch = switch
        self._knows_plug = knows_plug
        self.timeout_s = timeout_s

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
            reason=refusal.reason,
            executed_at_ms=now_ms,
            error=refusal.detail,
            session_id=cmd.session_id if cmd else "",
        )

    async def handle(self, data: bytes, now_ms: int) -> CommandOutcome:
        """Verify and (maybe) execute one command message; never raises for a bad command."""
        checked = verify_command(data, self.keyring, self.site_id, now_ms, self.journal)
        if isinstance(checked, Refusal):
            return self._refused(checked, now_ms)
        cmd = checked
        if not self._knows_plug(cmd.plug_mac):
            return self._refused(Refusal("unknown_plug", f"no plug {cmd.plug_mac} at this site", cmd), now_ms)
        keep_until = max(cmd.expires_at_ms, now_ms) + self.lifetime_ms
        self.journal.record(cmd.command_id, keep_until)
        auto_off = int(cmd.auto_off_s) if cmd.on and cmd.auto_off_s > 0 else None
        try:
            async with asyncio.timeout(self.timeout_s):  # not wait_for: it can swallow a cancellation
                observed = await self._switch(cmd.plug_mac, cmd.on, auto_off)
        except (DeviceError, TimeoutError) as exc:
            detail = str(exc) or type(exc).__name__
            log.warning("command %s on %s failed: %s", cmd.command_id, cmd.plug_mac, detail)
            return CommandOutcome(
                command_id=cmd.command_id,
                site_id=self.site_id,
                plug_mac=cmd.plug_mac,
                ok=False,
                reason="device_error",
                executed_at_ms=now_ms,
                error=detail,
                session_id=cmd.session_id,
            )
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
            reason="executed",
            executed_at_ms=now_ms,
            relay_on=observed,
            error="" if observed == cmd.on else "relay did not reach the commanded state",
            session_id=cmd.session_id,
        )
