"""``chargectl session``: start, stop and list charging sessions (through the store, answered by the hub)."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

__all__ = ["register"]

_STOP_HELP = "Stop the open session on a plug (the hub answers; the session is billed when it finishes)."


def _request(ctx: typer.Context, user: str, plug: str, action: int, wait_s: float, as_json: bool) -> None:
    from chargectl.common.errors import ChargectlError
    from chargectl.services.requests import make_request, request_and_wait
    from chargectl.services.wiring import open_store

    make_request(user, plug, action, 0)  # bad input is refused before the store is opened
    store = open_store(ctx.obj.config())
    try:
        answer = request_and_wait(store, user, plug, action, wait_s)
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps({**answer.to_dict(), "status": answer.status.upper()}))  # one JSON enum style
    elif answer.status == "accepted":
        typer.echo(f"accepted: session {answer.session_id}" if answer.session_id else "accepted")
    elif answer.status == "rejected":
        typer.echo(f"rejected: {answer.reason}")
    if answer.status == "rejected":
        raise typer.Exit(1)
    if answer.status in ("expired", "pending"):
        raise ChargectlError(
            f"no answer within {wait_s:g} s (is the hub running?); request {answer.request_id} "
            "expired and will not be acted on"
        )


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Start, stop and list charging sessions.", no_args_is_help=True)

    @group.command("start")
    def start(
        ctx: typer.Context,
        user: Annotated[str, typer.Option("--user", "-u", help="The user's id (their Google uid).")],
        plug: Annotated[str, typer.Option("--plug", "-p", help="The plug's MAC address.")],
        wait: Annotated[
            float,
            typer.Option("--wait", help="Seconds to wait for the hub's answer; then the request expires."),
        ] = 15.0,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Ask the hub to start a session for USER on PLUG; exits 1 if it is rejected."""
        from chargectl.common import codec

        _request(ctx, user, plug, codec.ChargeRequest.ACTION_START, wait, as_json)

    @group.command("stop", help=_STOP_HELP)
    def stop(
        ctx: typer.Context,
        plug: Annotated[str, typer.Option("--plug", "-p", help="The plug's MAC address.")],
        user: Annotated[str, typer.Option("--user", "-u", help="The session's user.")],
        wait: Annotated[
            float,
            typer.Option("--wait", help="Seconds to wait for the hub's answer; then the request expires."),
        ] = 15.0,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        from chargectl.common import codec

        _request(ctx, user, plug, codec.ChargeRequest.ACTION_STOP, wait, as_json)

    @group.command("list")
    def list_(
        ctx: typer.Context,
        user: Annotated[str | None, typer.Option("--user", "-u", help="Only this user's sessions.")] = None,
        plug: Annotated[str | None, typer.Option("--plug", "-p", help="Only this plug's sessions.")] = None,
        active: Annotated[bool, typer.Option("--active", help="Only open sessions.")] = False,
        limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many, newest first.")] = 50,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """List sessions, newest first."""
        from chargectl.common import codec
        from chargectl.common.errors import ConfigError
        from chargectl.common.readings import normalize_mac
        from chargectl.services.wiring import open_store

        try:
            mac = normalize_mac(plug) if plug else None
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        store = open_store(ctx.obj.config())
        try:
            sessions = store.list_sessions(user_id=user, plug_mac=mac, active_only=active, limit=limit)
        finally:
            store.close()
        from chargectl.cli.output import document

        docs = [document(s) for s in sessions]
        if as_json:
            typer.echo(json.dumps(docs, indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title="Sessions")
        for col in ("session", "user", "plug", "status", "started", "kWh", "cost", "stop reason"):
            table.add_column(col)
        for s in sessions:
            table.add_row(
                s.session_id,
                s.user_id,
                s.plug_mac,
                codec.ChargeSession.Status.Name(s.status).removeprefix("STATUS_"),
                time.strftime("%Y-%m-%d %H:%M", time.localtime(s.started_at_ms / 1000)),
                f"{s.energy_mwh / 1e6:.3f}",
                f"{s.cost.amount_minor / 100:.2f} {s.cost.currency.upper()}",
                s.stop_reason,
            )
        Console().print(table)

    app.add_typer(group, name="session")
