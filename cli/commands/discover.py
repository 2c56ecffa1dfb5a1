"""``chargectl discover``: find Shelly plugs on the LAN by mDNS, confirmed by ``GET /shelly``."""

from __future__ import annotations

import ipaddress
import json
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from chargectl.shelly.discovery import AddressPolicy

__all__ = ["AnyAddress", "Network", "probe_policy", "refused_lines", "register"]

Network = Annotated[
    list[str] | None,
    typer.Option(
        "--network",
        help="Probe only announcements inside this network, e.g. 192.168.1.0/24 (repeatable; default: "
        "the --interface networks, else this machine's connected private subnets).",
    ),
]
AnyAddress = Annotated[
    bool,
    typer.Option(
        "--any-address",
        help="Probe every announced address, even outside the LAN (anyone on it can announce any).",
    ),
]


def probe_policy(
    networks: list[str] | None, interface: list[str] | None, any_address: bool
) -> AddressPolicy | None:
    """Which announced addresses a survey may probe: ``None`` (any) only when asked for."""
    from chargectl.common.netif import resolve_interfaces
    from chargectl.shelly.discovery import AddressPolicy

    if any_address:
        if networks:
            raise typer.BadParameter("give --network or --any-address, not both", param_hint="--any-address")
        return None
    for net in networks or ():
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise typer.BadParameter(
                f"{net!r} is not a network (e.g. 192.168.1.0/24)", param_hint="--network"
            ) from None
    return AddressPolicy.for_cli(networks or (), resolve_interfaces(interface) if interface else ())


def refused_lines(refused: dict[str, str]) -> list[str]:
    """One line per announcement not probed or not adopted, for stderr."""
    return [f"not adopted: {where}: {why}" for where, why in sorted(refused.items())]


def register(app: typer.Typer) -> None:
    @app.command("discover")
    def discover(
        timeout: Annotated[
            float, typer.Option("--timeout", min=0.5, help="Seconds to listen for advertisements.")
        ] = 5.0,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print a JSON list instead of a table.")
        ] = False,
        interface: Annotated[
            list[str] | None,
            typer.Option(
                "--interface",
                help="Interface name (e.g. wlan0) or its IPv4 address (repeatable; default all).",
            ),
        ] = None,
        network: Network = None,
        any_address: AnyAddress = False,
    ) -> None:
        """List Shelly plugs: MAC, name, model, generation, firmware, address, auth, switchable.

        Only announcements inside the networks probed are asked ``GET /shelly`` (see --network); the
        others are listed on stderr as not adopted."""
        import asyncio

        from rich.console import Console

        from chargectl.shelly.discovery import survey

        policy = probe_policy(network, interface, any_address)
        if as_json:
            found = asyncio.run(survey(timeout, interface or None, policy))
            keys = ("mac", "gen", "model", "firmware", "host", "port", "auth", "switchable", "name")
            typer.echo(json.dumps([{k: p.as_dict()[k] for k in keys} for p in found.plugs], indent=2))
            for line in refused_lines(found.refused):
                typer.echo(line, err=True)
            return
        console = Console()
        what = "any address" if policy is None else policy.describe()
        with console.status(f"listening for Shelly plugs for {timeout:g} s (probing {what})…"):
            found = asyncio.run(survey(timeout, interface or None, policy))
        plugs = found.plugs
        for line in refused_lines(found.refused):
            typer.echo(line, err=True)
        if not plugs:
            console.print("no Shelly plugs found")
            return
        from rich.table import Table

        from chargectl.cli.output import id_column, print_table

        table = Table(title=f"{len(plugs)} Shelly plug(s)")
        id_column(table, "MAC")
        for column in ("name", "model", "gen", "firmware"):
            table.add_column(column)
        id_column(table, "address")
        for column in ("auth", "switchable"):
            table.add_column(column)
        for p in plugs:
            table.add_row(
                p.mac,
                p.name or "",
                p.model,
                str(p.gen),
                p.firmware,
                f"{p.host}:{p.port}",
                "yes" if p.auth else "no",
                "yes" if p.switchable else "[yellow]metering only[/]",
            )
        print_table(table)
