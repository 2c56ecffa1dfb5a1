"""``chargectl provision``: create, list, show, rotate and revoke sites; write a site's agent bundle.

Every change is a plan (what must exist, what already does) then an apply that reports each step;
``--dry-run`` prints the plan only. Private keys are never printed; ``--json`` shows public keys only.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from chargectl.common.codec import Site
    from chargectl.provisioner.plan import Plan, Step
    from chargectl.provisioner.site import Provisioner

__all__ = ["register"]

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (never contains private keys).")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the plan and change nothing.")]
OutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out", "-o", help="Bundle path (default: ./chargectl-<site>-bundle[.tar.gz]).", show_default=False
    ),
]
TarballOpt = Annotated[bool, typer.Option("--tarball", help="Write the bundle as a .tar.gz file.")]
NoBundleOpt = Annotated[bool, typer.Option("--no-bundle", help="Do not write the agent bundle.")]


def _now_ms() -> int:
    from chargectl.common.clock import SystemClock

    return int(SystemClock().now() * 1000)


def _open(ctx: typer.Context, dry_run: bool = False) -> tuple[Provisioner, Any]:
    from chargectl.provisioner.wiring import ProvisionSettings, open_provisioner

    config = ctx.obj.config()
    return open_provisioner(config, dry_run=dry_run), config.section("provision", ProvisionSettings)


def _target(site_id: str, out: Path | None, tarball: bool) -> Any:
    """The bundle's path, checked before anything is provisioned (a bad one changes nothing)."""
    from chargectl.provisioner.bundle import BundleTarget, check_target

    if out is None:
        out = Path(f"chargectl-{site_id}-bundle" + (".tar.gz" if tarball else ""))
    target = BundleTarget(out.expanduser().resolve(), tarball)
    check_target(target)
    return target


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _key_json(key: Any) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "public_key": base64.b64encode(bytes(key.public_key)).decode(),
        "not_before_ms": int(key.not_before_ms),
        "not_after_ms": int(key.not_after_ms),
    }


def site_json(site: Site) -> dict[str, Any]:
    """A ``Site`` document for output: ids, status, public keys with windows, tariff, topics."""
    from chargectl.common.codec import Site, to_document

    return {
        "site_id": site.site_id,
        "name": site.name,
        "shard": int(site.shard),
        "status": Site.Status.Name(site.status).removeprefix("STATUS_"),
        "agent_keys": [_key_json(k) for k in site.agent_keys],
        "command_keys": [_key_json(k) for k in site.command_keys],
        "tariff": to_document(site.tariff),
        "command_topic": site.command_topic,
        "command_subscription": site.command_subscription,
        "created_at_ms": int(site.created_at_ms),
        "updated_at_ms": int(site.updated_at_ms),
    }


_STATUS_WORDS = {
    "provision": ("exists", "to create"),
    "rotate-keys": ("done", "to change"),
    "revoke": ("done", "to revoke"),
    "bundle": ("current", "to write"),
}


def _print_plan(plan: Plan, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in ("kind", "name", "what", "status"):
        table.add_column(col)
    # What a step's two states mean depends on the operation: revoking does not "create" anything.
    done_word, todo_word = _STATUS_WORDS.get(plan.operation, ("done", "to do"))
    for step in plan.steps:
        status = f"[green]{done_word}[/]" if step.done else f"[yellow]{todo_word}[/]"
        table.add_row(step.kind, step.target, step.description, status)
    Console().print(table)


def _run(plan: Plan, dry_run: bool, as_json: bool, extra: dict[str, Any] | None = None) -> None:
    from chargectl.provisioner.plan import apply

    if dry_run:
        if as_json:
            typer.echo(json.dumps({"dry_run": True, "plan": plan.to_json(), **(extra or {})}, indent=2))
        else:
            _print_plan(plan, f"{plan.operation} {plan.site_id} (dry run: nothing changed)")
        return
    if not as_json and not plan.pending:
        typer.echo(f"{plan.operation} {plan.site_id}: already done; nothing to change")

    def report(step: Step) -> None:
        if not as_json:
            typer.echo(f"  done  {step.kind:<12} {step.target}  ({step.description})")

    done = apply(plan, on_step=report)
    if as_json:
        payload = {"plan": plan.to_json(), "applied": [s.to_json() | {"status": "done"} for s in done]}
        typer.echo(json.dumps(payload | (extra or {}), indent=2))


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="Provision sites: keys, topics, secrets, the Pi's agent bundle.", no_args_is_help=True
    )

    @group.command("site")
    def site_cmd(
        ctx: typer.Context,
        name: Annotated[str, typer.Argument(help="Human name of the site, e.g. 'Riverside car park'.")],
        site_id: Annotated[
            str | None,
            typer.Option("--site-id", help="Site id (default: derived from NAME).", show_default=False),
        ] = None,
        shard: Annotated[
            int | None, typer.Option("--shard", help="Hub shard (default 0).", show_default=False)
        ] = None,
        tariff: Annotated[
            str | None,
            typer.Option(
                "--tariff",
                help="Tariff as key=value,… over the Tariff fields, e.g. price_per_kwh_minor=35,session_fee_minor=50.",
                show_default=False,
            ),
        ] = None,
        out: OutOpt = None,
        tarball: TarballOpt = False,
        no_bundle: NoBundleOpt = False,
        dry_run: DryRunOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Create a site (id, key pairs, topics, subscription, secrets, Site document, bundle); a rerun
        is a no-op and completes an interrupted run."""
        from chargectl.common.topics import validate_site_id
        from chargectl.provisioner.site import SiteSpec, parse_tariff, site_id_from_name

        sid = validate_site_id(site_id) if site_id else site_id_from_name(name)
        prov, settings = _open(ctx, dry_run)
        spec = SiteSpec(
            site_id=sid,
            name=name,
            shard=shard,
            tariff=parse_tariff(tariff if tariff is not None else settings.tariff, sid, settings.currency),
        )
        target = None if no_bundle else _target(sid, out, tarball)
        plan = prov.plan_site(spec, _now_ms(), target)
        _run(plan, dry_run, as_json, {"bundle": str(target.path) if target else None})
        if not dry_run and not as_json and target is not None:
            typer.echo(f"bundle: {target.path} (contains the agent's private key: copy it to the Pi only)")

    @group.command("list")
    def list_cmd(ctx: typer.Context, as_json: JsonOpt = False) -> None:
        """List the provisioned sites."""
        prov, _ = _open(ctx)
        sites = [site_json(s) for s in prov.store.list_sites()]
        if as_json:
            typer.echo(json.dumps(sites, indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table()
        for col in ("site", "name", "shard", "status", "agent keys", "command keys"):
            table.add_column(col)
        for s in sites:
            table.add_row(
                s["site_id"],
                s["name"],
                str(s["shard"]),
                s["status"],
                str(len(s["agent_keys"])),
                str(len(s["command_keys"])),
            )
        Console().print(table)

    @group.command("show")
    def show_cmd(
        ctx: typer.Context,
        site: Annotated[str, typer.Argument(help="Site id.")],
        as_json: JsonOpt = False,
    ) -> None:
        """Show one site: status, shard, topics, public keys and their validity windows, tariff."""
        prov, _ = _open(ctx)
        data = site_json(prov.site(site))
        if as_json:
            typer.echo(json.dumps(data, indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(show_header=False, box=None)
        for key in ("site_id", "name", "shard", "status", "command_topic", "command_subscription"):
            table.add_row(key, str(data[key]))
        for kind in ("agent_keys", "command_keys"):
            for k in data[kind]:
                until = _iso(k["not_after_ms"]) if k["not_after_ms"] else "no expiry"
                window = f"valid from {_iso(k['not_before_ms'])} until {until}"
                table.add_row(kind.removesuffix("s"), f"{k['key_id']}  ({window})")
        table.add_row("tariff", json.dumps(data["tariff"]))
        Console().print(table)

    @group.command("rotate-keys")
    def rotate_cmd(
        ctx: typer.Context,
        site: Annotated[str, typer.Argument(help="Site id.")],
        grace_s: Annotated[
            float | None,
            typer.Option(
                "--grace-s",
                help="How long the old keys stay valid (default: [provision] grace_s).",
                show_default=False,
            ),
        ] = None,
        out: OutOpt = None,
        tarball: TarballOpt = False,
        dry_run: DryRunOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """New key pairs for a site; the old public keys stay valid for the grace period; a new bundle."""
        prov, settings = _open(ctx, dry_run)
        grace = settings.grace_s if grace_s is None else grace_s
        target = _target(site, out, tarball)
        plan = prov.plan_rotate(site, _now_ms(), int(grace * 1000), target)
        _run(plan, dry_run, as_json, {"bundle": str(target.path)})

    @group.command("revoke")
    def revoke_cmd(
        ctx: typer.Context,
        site: Annotated[str, typer.Argument(help="Site id.")],
        yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
        dry_run: DryRunOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Revoke a site: hubs reject its telemetry, its command subscription is deleted, its keys disabled."""
        prov, _ = _open(ctx, dry_run)
        plan = prov.plan_revoke(site, _now_ms())
        if not dry_run and plan.pending and not yes:
            typer.confirm(f"Revoke site {plan.site_id}? Its agent stops being trusted", abort=True)
        _run(plan, dry_run, as_json)

    @group.command("bundle")
    def bundle_cmd(
        ctx: typer.Context,
        site: Annotated[str, typer.Argument(help="Site id.")],
        out: OutOpt = None,
        tarball: TarballOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """(Re)write the agent bundle of an existing site, e.g. for a replacement Pi."""
        prov, _ = _open(ctx)
        target = _target(site, out, tarball)
        _run(prov.plan_bundle(site, _now_ms(), target), False, as_json, {"bundle": str(target.path)})

    app.add_typer(group, name="provision")
