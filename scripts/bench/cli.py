"""Running the sections, rendering the tables (terminal and Markdown) and the command line."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from chargectl.services.hub.settings import HubSettings

from .agent import bench_agent
from .core import Plan, Report
from .cost import bench_cost
from .hub import bench_hub
from .latency import bench_latency
from .memory import bench_memory
from .wire import bench_wire

SECTIONS: dict[str, Callable[[Plan, Report], None]] = {
    "wire": bench_wire,
    "hub": bench_hub,
    "memory": bench_memory,
    "agent": bench_agent,
    "latency": bench_latency,
    "cost": bench_cost,
}


TITLES = {
    "wire": "1. Wire size: signed, compressed TelemetryBatch (poll 5 s, flush 30 s, ≤5,000 readings); hub decode",
    "hub": "2. Hub throughput, one core: verify, zstd, decode, dedupe, machine step, line protocol",
    "memory": "3. Hub memory per plug: MachineState and its entry in the plug map (tracemalloc)",
    "agent": "4. Agent: CPU per plug-poll of the running agent (poll, batch, sign, publish) against the simulator",
    "latency": "5. Request → relay on: ChargeRequest in the store until the agent confirms the plug is on",
    "cost": "6. Monthly Pub/Sub + Firestore bill (30-day month, 1,000-byte request minimum applied)",
}


def run(
    plan: Plan, only: Sequence[str] = tuple(SECTIONS), progress: Callable[[str], None] | None = None
) -> Report:
    import logging

    # The hub logs every transition and alert; at benchmark volume that is noise on the terminal.
    logging.getLogger("chargectl").setLevel(logging.ERROR)
    report = Report()
    report.details["plan"] = {k: v for k, v in plan.__dict__.items()}
    report.details["machine"] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    for name in only:
        if progress:
            progress(name)
        t0 = time.perf_counter()
        SECTIONS[name](plan, report)
        report.details.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 1)
    return report


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if unit == "$":
        return f"${value:,.2f}"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip() if unit not in ("$",) else text


def render(report: Report, console: Any) -> None:
    from rich.table import Table

    for section, title in TITLES.items():
        rows = [f for f in report.figures if f.section == section]
        if not rows:
            continue
        table = Table(title=title, title_justify="left", show_lines=False)
        table.add_column("figure")
        table.add_column("chargectl", justify="right")
        table.add_column("baseline", justify="right")
        table.add_column("baseline is", style="dim")
        table.add_column("gain ×", justify="right")
        for f in rows:
            gain = f.gain
            table.add_row(
                f.name,
                _fmt(f.value, f.unit),
                _fmt(f.baseline, f.unit) if f.baseline is not None else "—",
                f.baseline_name or "—",
                f"{gain:.2f}×" if gain is not None else "—",
            )
        console.print(table)
    cost = report.details.get("cost")
    if cost:
        sim = cost["simulation"]
        table = Table(title="6b. Cost breakdown", title_justify="left")
        for col in (
            "plugs",
            "region",
            "Pub/Sub",
            "Firestore",
            "of which checkpoints (writes)",
            "total",
            "Firestore per reading",
        ):
            table.add_column(col, justify="right")
        for n, regions in cost["monthly"].items():
            for region, c in regions.items():
                table.add_row(
                    f"{int(n):,}",
                    region,
                    _fmt(c["pubsub_usd"], "$"),
                    _fmt(c["firestore_usd"], "$"),
                    f"{c['checkpoint_writes']:,.0f}",
                    _fmt(c["total_usd"], "$"),
                    _fmt(c["firestore_per_reading_usd"], "$"),
                )
        console.print(table)
        console.print(
            f"simulated {sim['plugs']} plugs × {sim['hours']:g} h: {sim['requests']} requests, "
            f"{sim['sessions_billed']} sessions billed; per plug-hour: "
            + ", ".join(f"{k} {v:.3f}" for k, v in sim["writes_per_plug_hour"].items())
            + " Firestore writes; "
            + ", ".join(f"{k} {v:.2f}" for k, v in sim["messages_per_plug_hour"].items())
            + " Pub/Sub messages"
        )
    hub = report.details.get("hub")
    if hub:
        for n, d in hub.items():
            console.print(
                f"hub {int(n):,} plugs: readings use {d['core_share_readings']:.1%} of a core at 5 s polls; "
                f"Hub.tick every {HubSettings().tick_interval_s:g} s uses {d['core_share_ticks']:.1%}"
            )
    for note in report.notes:
        console.print(note)


def markdown(report: Report) -> str:
    """The figures as one Markdown table (the README's Performance section)."""
    out = ["| section | figure | chargectl | baseline | baseline is | gain |", "|---|---|---:|---:|---|---:|"]
    for f in report.figures:
        gain = f.gain
        out.append(
            f"| {f.section} | {f.name} | {_fmt(f.value, f.unit)} | "
            f"{_fmt(f.baseline, f.unit) if f.baseline is not None else '—'} | {f.baseline_name or '—'} | "
            f"{f'{gain:.2f}×' if gain is not None else '—'} |"
        )
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None, plan: Plan | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="chargectl benchmarks: wire size, hub throughput and memory, agent CPU, request → relay latency, cost.",
    )
    parser.add_argument("--quick", action="store_true", help="a subset that runs in under a minute")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every figure and detail as JSON")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="write the figures as a Markdown table")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated sections ({', '.join(SECTIONS)})"
    )
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section {unknown[0]!r}; choose from {', '.join(SECTIONS)}")
    plan = plan or (Plan.quick() if args.quick else Plan.full())

    from rich.console import Console

    console = Console() if sys.stdout.isatty() else Console(width=140)
    started = time.perf_counter()
    report = run(plan, only, progress=lambda name: console.print(f"[dim]running {name}…[/dim]"))
    render(report, console)
    report.details["total_seconds"] = round(time.perf_counter() - started, 1)
    console.print(
        f"[dim]{'quick' if args.quick else 'full'} run, {report.details['total_seconds']} s; "
        f"command: python scripts/bench.py {' '.join(argv if argv is not None else sys.argv[1:])}[/dim]"
    )
    if args.markdown:
        args.markdown.write_text(markdown(report))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"figures": [f.to_dict() for f in report.figures], "details": report.details}, indent=2
            )
            + "\n"
        )
    return 0
