"""``chargectl relay on|off|toggle|status TARGET``: switch or read one plug (host[:port] or MAC)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from chargectl.cli.commands.discover import AnyAddress, Network, probe_policy

if TYPE_CHECKING:
    from chargectl.common.readings import Reading
    from chargectl.shelly.client import ShellyClient
    from chargectl.shelly.discovery import AddressPolicy

__all__ = ["register"]

Target = Annotated[str, typer.Argument(help="host[:port] of the plug, or its MAC (found by mDNS).")]
Password = Annotated[
    str | None,
    typer.Option(
        "--password", envvar="CHARGECTL_SHELLY_PASSWORD", help="Device password.", show_default=False
    ),
]
User = Annotated[
    str | None,
    typer.Option(
        "--device-user",
        "--user",
        help="The plug's own login name, Gen1 only (Gen2+ is always admin); --user is its older spelling.",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the plug's status as JSON.")]
Timeout = Annotated[
    float, typer.Option("--timeout", min=0.1, help="Per-request (and MAC lookup) timeout, s.")
]
Interface = Annotated[
    list[str] | None,
    typer.Option("--interface", help="Interface name or IPv4 for the mDNS lookup of a MAC (repeatable)."),
]


def parse_target(target: str) -> tuple[str | None, str | None, int]:
    """``TARGET`` → (mac, host, port): a 12-hex MAC in any format, else ``host[:port]``."""
    from chargectl.common.readings import normalize_mac

    try:
        return normalize_mac(target), None, 80
    except ValueError:
        pass
    host, sep, port_text = target.rpartition(":")
    if not sep:
        host, port_text = target, "80"
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536 or " " in host:
        raise typer.BadParameter(f"{target!r} is neither host[:port] nor a MAC", param_hint="TARGET")
    return None, host, int(port_text)


async def _open(
    target: str,
    password: str | None,
    user: str | None,
    timeout: float,
    interface: list[str] | None,
    policy: AddressPolicy | None = None,
) -> ShellyClient:
    from chargectl.common.errors import DeviceUnreachableError
    from chargectl.shelly.client import ShellyClient
    from chargectl.shelly.discovery import survey

    mac, host, port = parse_target(target)
    if mac is not None:
        result = await survey(timeout, interface or None, policy)
        found = [p for p in result.plugs if p.mac == mac]
        if not found:
            refused = {
                where.split(" ", 1)[0]: why
                for where, why in result.refused.items()
                if mac[-6:].lower() in where.lower()
            }
            hint = "".join(
                f"; announced at {where}, not adopted: {why}" for where, why in sorted(refused.items())
            )
            hint += " (give its address as host:port)" if refused else ""
            raise DeviceUnreachableError(f"plug {mac} was not found by mDNS within {timeout:g} s{hint}")
        host, port = found[0].host, found[0].port
    assert host is not None
    return await ShellyClient.connect(host, port, password=password, user=user, timeout_s=timeout, mac=mac)


def status_dict(client: ShellyClient, reading: Reading) -> dict[str, Any]:
    from chargectl.common.readings import DeviceFlag

    errors = [f.name.lower() for f in DeviceFlag if f and f.name and reading.errors & f]
    return {
        "mac": client.mac,
        "gen": client.gen,
        "model": client.model,
        "host": client.host,
        "port": client.port,
        "switchable": client.switchable,
        "on": reading.relay_on,
        "power_w": reading.power_w,
        "energy_wh": reading.energy_mwh / 1000,
        "voltage_v": reading.voltage_v,
        "current_a": reading.current_a,
        "temperature_c": reading.temperature_c,
        "errors": errors,
        "uptime_s": reading.uptime_s,
    }


def _print(data: dict[str, Any], as_json: bool, note: str = "") -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None, title=note or None)
    for key, value in data.items():
        table.add_row(key, "—" if value is None else str(value))
    Console().print(table)


def _run(
    action: str,
    target: str,
    auto_off: int | None,
    as_json: bool,
    user: str | None,
    password: str | None,
    timeout: float,
    interface: list[str] | None,
    network: list[str] | None = None,
    any_address: bool = False,
) -> None:
    import asyncio

    policy = probe_policy(network, interface, any_address) if parse_target(target)[0] is not None else None

    async def go() -> tuple[dict[str, Any], str]:
        client = await _open(target, password, user, timeout, interface, policy)
        async with client:
            note = ""
            if action in ("on", "off"):
                await client.set_relay(action == "on", auto_off)
                note = f"relay {action}" + (f", flips back in {auto_off} s" if auto_off else "")
            elif action == "toggle":
                state = await client.toggle()
                note = f"relay toggled {'on' if state else 'off'}"
            return status_dict(client, await client.read()), note

    data, note = asyncio.run(go())
    _print(data, as_json, note)


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Switch or read one plug.", no_args_is_help=True)

    @group.command("on")
    def on(
        target: Target,
        auto_off: Annotated[
            int | None,
            typer.Option("--auto-off", min=1, help="Device flip-back timer: off again after S seconds."),
        ] = None,
        as_json: AsJson = False,
        user: User = None,
        password: Password = None,
        timeout: Timeout = 5.0,
        interface: Interface = None,
        network: Network = None,
        any_address: AnyAddress = False,
    ) -> None:
        """Switch the relay on (optionally arming the plug's own flip-back timer)."""
        _run("on", target, auto_off, as_json, user, password, timeout, interface, network, any_address)

    @group.command("off")
    def off(
        target: Target,
        auto_off: Annotated[
            int | None,
            typer.Option("--auto-off", min=1, help="Device flip-back timer: on again after S seconds."),
        ] = None,
        as_json: AsJson = False,
        user: User = None,
        password: Password = None,
        timeout: Timeout = 5.0,
        interface: Interface = None,
        network: Network = None,
        any_address: AnyAddress = False,
    ) -> None:
        """Switch the relay off."""
        _run("off", target, auto_off, as_json, user, password, timeout, interface, network, any_address)

    @group.command("toggle")
    def toggle(
        target: Target,
        as_json: AsJson = False,
        user: User = None,
        password: Password = None,
        timeout: Timeout = 5.0,
        interface: Interface = None,
        network: Network = None,
        any_address: AnyAddress = False,
    ) -> None:
        """Flip the relay."""
        _run("toggle", target, None, as_json, user, password, timeout, interface, network, any_address)

    @group.command("status")
    def status(
        target: Target,
        as_json: AsJson = False,
        user: User = None,
        password: Password = None,
        timeout: Timeout = 5.0,
        interface: Interface = None,
        network: Network = None,
        any_address: AnyAddress = False,
    ) -> None:
        """Show relay state, power, energy counter, voltage, temperature and protection errors."""
        _run("status", target, None, as_json, user, password, timeout, interface, network, any_address)

    app.add_typer(group, name="relay")
