"""``chargectl demo``: run + simulated plugs + simulated drivers, with a live dashboard."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["register"]


def _dashboard(snap: dict[str, Any]) -> Any:
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    plugs = Table(title="Plugs", expand=True)
    for col in ("plug", "vehicle", "state", "power W", "driver", "session kWh", "cost"):
        plugs.add_column(col)
    colors = {
        "CHARGING": "green",
        "AVAILABLE": "white",
        "SUSPENDED_EV": "yellow",
        "SUSPENDED_EVSE": "red",
        "FINISHING": "cyan",
        "FAULTED": "bold red",
        "OFFLINE": "dim",
        "AUTHORIZED": "blue",
    }
    for p in snap["plugs"]:
        color = colors.get(p["state"], "white")
        plugs.add_row(
            p["mac"],
            p["vehicle"],
            f"[{color}]{p['state']}[/]",
            f"{p['power_w']:.0f}",
            p["user"],
            f"{p['energy_kwh']:.3f}",
            f"£{p['cost_minor'] / 100:.2f}",
        )
    sessions = Table(title="Recent sessions", expand=True)
    for col in ("session", "driver", "plug", "status", "kWh", "cost", "stop reason"):
        sessions.add_column(col)
    for s in snap["sessions"]:
        sessions.add_row(
            s["session_id"][-12:],
            s["user"],
            s["plug"],
            s["status"],
            f"{s['energy_kwh']:.3f}",
            f"£{s['cost_minor'] / 100:.2f}",
            s["stop_reason"],
        )
    balances = Table(title="Balances", expand=True)
    balances.add_column("driver")
    balances.add_column("balance")
    for user, amount in sorted(snap["balances"].items()):
        balances.add_row(user, f"£{amount / 100:.2f}")
    events = "\n".join(snap["events"]) or "waiting for the first driver…"
    head = time.strftime("%Y-%m-%d %H:%M", time.gmtime(snap["sim_time"]))
    console = f"\nconsole: {snap['console_url']}" if snap.get("console_url") else ""
    return Group(
        Panel(
            f"simulated time {head} UTC · speed ×{snap['speed']:g} · Ctrl-C to stop{console}",
            title="chargectl demo",
        ),
        plugs,
        sessions,
        balances,
        Panel(events, title="Drivers"),
    )


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        ctx: typer.Context,
        plugs: Annotated[int, typer.Option("--plugs", min=1, max=200, help="Simulated plugs.")] = 6,
        speed: Annotated[
            float, typer.Option("--speed", min=1.0, help="Simulated seconds per real second.")
        ] = 300.0,
        duration: Annotated[
            float | None, typer.Option("--duration", min=1.0, help="Stop after this many real seconds.")
        ] = None,
        seed: Annotated[int | None, typer.Option("--seed", help="Random seed (repeatable runs).")] = None,
        state_dir: Annotated[
            Path | None, typer.Option("--state-dir", help="Keep the demo's data here (default: a temp dir).")
        ] = None,
        as_json: Annotated[
            bool, typer.Option("--json", help="No dashboard; print a JSON summary at the end.")
        ] = False,
        console_port: Annotated[
            int,
            typer.Option(
                "--console-port",
                min=0,
                max=65535,
                help="Serve the operator console on 127.0.0.1 at this port (0: any free port; "
                "a busy port falls back to a free one).",
            ),
        ] = 8787,
        no_console: Annotated[bool, typer.Option("--no-console", help="Do not serve the console.")] = False,
    ) -> None:
        """The whole system on one machine: simulated plugs, drivers topping up and charging, a live dashboard.

        Sessions start, charge, complete and are billed by the real hub over the real agent, at --speed
        times real time. Stops on Ctrl-C or after --duration seconds.
        """
        import asyncio
        import contextlib
        import logging
        import signal
        import sys

        from chargectl.provisioner.local import provision_local_site
        from chargectl.services.demo import Demo, DemoSettings

        if ctx.obj.verbose == 0:
            logging.getLogger("chargectl").setLevel(logging.WARNING)
        runner = Demo(
            DemoSettings(
                plugs=plugs,
                speed=speed,
                duration_s=duration,
                seed=seed,
                state_dir=state_dir,
                console_port=None if no_console else console_port,
            ),
            provision_local_site,
        )
        if runner.console_url:  # before anything else, so a newcomer can open it right away
            typer.echo(f"operator console: {runner.console_url}", err=as_json)
        live_ui = not as_json and sys.stdout.isatty()

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError):
                    loop.add_signal_handler(sig, runner.request_stop)
            task = asyncio.create_task(runner.serve())
            if live_ui:
                from rich.live import Live

                with Live(_dashboard(runner.snapshot()), refresh_per_second=2, screen=False) as live:
                    while not task.done():
                        live.update(_dashboard(runner.snapshot()))
                        await asyncio.sleep(0.5)
            await task

        try:
            asyncio.run(main())
            summary = runner.summary()
        finally:
            runner.cleanup()
        if as_json:
            typer.echo(json.dumps(summary))
        else:
            typer.echo(
                f"demo finished: {summary['completed']} sessions completed, {summary['energy_kwh']:.2f} kWh, "
                f"£{summary['billed_minor'] / 100:.2f} billed"
            )
