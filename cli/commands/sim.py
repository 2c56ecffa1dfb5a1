"""``chargectl sim``: run N simulated Shelly plugs (real HTTP servers, mDNS) until interrupted."""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.table import Table

    from chargectl.shelly.sim import SimFleet

__all__ = ["register"]


def _table(fleet: SimFleet) -> Table:
    from rich.table import Table

    table = Table(title=f"chargectl sim — {len(fleet.plugs)} plug(s)  (Ctrl-C stops)")
    for column in (
        "address",
        "MAC",
        "gen",
        "model",
        "load",
        "relay",
        "power W",
        "energy Wh",
        "timer s",
        "faults",
    ):
        table.add_column(column)
    for plug in fleet.plugs:
        s = plug.state()
        timer = s["timer_remaining_s"]
        table.add_row(
            plug.address,
            plug.mac,
            str(plug.profile.gen),
            plug.profile.model,
            str(s["load"]),
            "[green]on[/]" if s["relay_on"] else "off",
            f"{s['power_w']:.1f}",
            f"{s['energy_mwh'] / 1000:.3f}",
            f"{timer:.0f}" if timer is not None else "",
            ", ".join(s["faults"]) + (" tripped" if s["tripped"] else ""),
        )
    return table


def register(app: typer.Typer) -> None:
    @app.command("sim")
    def sim(
        plugs: Annotated[int, typer.Option("--plugs", min=1, max=200, help="How many plugs.")] = 3,
        gen: Annotated[str, typer.Option("--gen", help="Generation: 1, 2, 3, 4 or mix.")] = "mix",
        profile: Annotated[str, typer.Option("--profile", help="Load: ev, ebike, idle or mix.")] = "mix",
        password: Annotated[
            str | None, typer.Option("--password", help="Enable auth on every plug with this password.")
        ] = None,
        no_mdns: Annotated[bool, typer.Option("--no-mdns", help="Do not advertise over mDNS.")] = False,
        interface: Annotated[
            list[str] | None,
            typer.Option(
                "--interface", help="Interface IPv4 to advertise on (repeatable; default 127.0.0.1)."
            ),
        ] = None,
        host: Annotated[
            str, typer.Option("--host", help="IPv4 address the plugs listen on (and advertise).")
        ] = "127.0.0.1",
        speed: Annotated[
            float, typer.Option("--speed", min=0.001, help="Simulated time runs this much faster.")
        ] = 1.0,
        seed: Annotated[int | None, typer.Option("--seed", help="Seed for the plugs' MACs.")] = None,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print one JSON line describing the plugs, no live table.")
        ] = False,
    ) -> None:
        """Run simulated plugs speaking the Gen1 or Gen2+ API; control them under http://PLUG/__sim/."""
        import asyncio
        import signal
        import socket

        from chargectl.common.clock import ScaledClock, SystemClock
        from chargectl.common.errors import ConfigError
        from chargectl.shelly.sim import SimClock, SimFleet

        if gen not in ("1", "2", "3", "4", "mix"):
            raise ConfigError(f"--gen must be 1, 2, 3, 4 or mix, not {gen!r}")
        if profile not in ("ev", "ebike", "idle", "mix"):
            raise ConfigError(f"--profile must be ev, ebike, idle or mix, not {profile!r}")
        try:
            socket.inet_aton(host)
        except OSError:
            raise ConfigError(f"--host must be an IPv4 address, not {host!r}") from None
        clock = SimClock(ScaledClock(speed) if speed != 1.0 else SystemClock())
        fleet = SimFleet.build(
            plugs,
            gen,
            profile=profile,
            password=password,
            clock=clock,
            interfaces=None if no_mdns else (interface or ["127.0.0.1"]),
            seed=seed,
            host=host,
        )

        async def run() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            async with fleet:
                if as_json:
                    info = [
                        {
                            "mac": p.mac,
                            "gen": p.profile.gen,
                            "model": p.profile.model,
                            "host": p.host,
                            "port": p.port,
                            "load": p.device.load.name,
                        }
                        for p in fleet.plugs
                    ]
                    typer.echo(json.dumps({"plugs": info}), nl=True)
                    await stop.wait()
                    return
                from rich.live import Live

                with Live(_table(fleet), refresh_per_second=2) as live:
                    while not stop.is_set():
                        live.update(_table(fleet))
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), 1.0)

        asyncio.run(run())
