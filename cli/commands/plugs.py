"""``chargectl plugs``: the live state of every plug, as the hub mirrors it to the store; ``plugs assign``
and ``plugs release`` set which site owns a plug (the hub refuses a plug's readings from any other)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Annotated

import typer

__all__ = ["register"]

if TYPE_CHECKING:
    from chargectl.services.adapters.store import Store


def _touch_sites(store: Store, site_ids: set[str], now_ms: int) -> None:
    """Mark the sites changed, so running hubs re-read the plug bindings at their next trust refresh."""
    for site_id in sorted(s for s in site_ids if s):
        doc = store.get_site(site_id)
        if doc is not None:
            doc.updated_at_ms = max(now_ms, doc.updated_at_ms + 1)
            store.put_site(doc)


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="Plugs: their live state, and which site owns each one.",
        invoke_without_command=True,
        no_args_is_help=False,
    )

    @group.callback()
    def plugs(
        ctx: typer.Context,
        site: Annotated[str | None, typer.Option("--site", help="Only this site's plugs.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Show every plug's state, power, energy counter and open session."""
        if ctx.invoked_subcommand is not None:
            return
        from chargectl.common import codec
        from chargectl.services.wiring import open_store

        store = open_store(ctx.obj.config())
        try:
            states = store.list_plug_states(site)
        finally:
            store.close()
        if as_json:
            from chargectl.cli.output import document

            typer.echo(json.dumps([document(s) for s in states], indent=2))
            return
        from rich.table import Table

        from chargectl.cli.output import id_column, print_table

        table = Table(title="Plugs")
        id_column(table, "plug")
        id_column(table, "site")
        for col in ("state", "relay", "power W", "counter kWh"):
            table.add_column(col)
        id_column(table, "session")
        table.add_column("updated")
        for s in states:
            table.add_row(
                s.plug_mac,
                s.site_id,
                codec.PlugStatus.Name(s.status).removeprefix("PLUG_STATUS_"),
                "on" if s.relay_on else "off",
                f"{s.power_w:.1f}",
                f"{s.energy_counter_mwh / 1e6:.3f}",
                s.session_id,
                time.strftime("%H:%M:%S", time.localtime(s.updated_at_ms / 1000)),
            )
        print_table(table)

    @group.command("assign")
    def assign(
        ctx: typer.Context,
        mac: Annotated[str, typer.Argument(help="The plug's MAC (aa:bb:cc:dd:ee:ff or AABBCCDDEEFF).")],
        site: Annotated[str, typer.Option("--site", help="The site that owns the plug from now on.")],
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Bind a plug to a site (also how a plug moves between sites). A running hub follows within
        [hub] trust_refresh_s; readings of the plug from any other site are refused from then on."""
        from chargectl.common import codec
        from chargectl.common.errors import ConfigError, NotFoundError
        from chargectl.common.readings import normalize_mac
        from chargectl.services.wiring import open_store

        try:
            plug = normalize_mac(mac)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        store = open_store(ctx.obj.config())
        try:
            doc = store.get_site(site)
            if doc is None:
                raise NotFoundError(f"no site {site!r}: provision it first (chargectl provision)")
            if doc.status == codec.Site.STATUS_REVOKED:
                raise ConfigError(f"site {site!r} is revoked: a revoked site cannot own plugs")
            before = store.plug_bindings().get(plug, "")
            now_ms = int(time.time() * 1000)
            store.bind_plug(plug, site, now_ms, replace=True)
            _touch_sites(store, {site, before}, now_ms)
        finally:
            store.close()
        if as_json:
            typer.echo(json.dumps({"plug_mac": plug, "site_id": site, "previous_site_id": before}))
        elif before and before != site:
            typer.echo(f"plug {plug} moved from site {before} to {site}")
        else:
            typer.echo(f"plug {plug} belongs to site {site}")

    @group.command("release")
    def release(
        ctx: typer.Context,
        mac: Annotated[str, typer.Argument(help="The plug's MAC.")],
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Forget which site owns a plug: the next site to report it owns it."""
        from chargectl.common.errors import ConfigError, NotFoundError
        from chargectl.common.readings import normalize_mac
        from chargectl.services.wiring import open_store

        try:
            plug = normalize_mac(mac)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        store = open_store(ctx.obj.config())
        try:
            before = store.plug_bindings().get(plug, "")
            if not store.release_plug(plug):
                raise NotFoundError(f"plug {plug} is not bound to any site")
            _touch_sites(store, {before}, int(time.time() * 1000))
        finally:
            store.close()
        if as_json:
            typer.echo(json.dumps({"plug_mac": plug, "released_from": before}))
        else:
            typer.echo(f"plug {plug} released from site {before}")

    app.add_typer(group, name="plugs")
