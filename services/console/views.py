"""What the console shows, as plain data: the JSON API's documents and today's totals. Pure (``now_ms``
is an argument), so the page and the API can never disagree."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from chargectl.common import codec
from chargectl.common.alerts import Alert
from chargectl.services.console.source import LiveSession, PlugRow
from chargectl.services.hub.billing import Cost, Tariff, round_minor, session_cost
from chargectl.services.payments.money import ZERO_DECIMAL

__all__ = [
    "STATE_COLOURS",
    "alert_doc",
    "cost_breakdown",
    "cost_lines",
    "day_start_ms",
    "money",
    "plug_doc",
    "session_doc",
    "today_totals",
]

# State → colour class on the page (the legend is the state name itself).
STATE_COLOURS = {
    "AVAILABLE": "ok",
    "AUTHORIZED": "busy",
    "CHARGING": "busy",
    "SUSPENDED_EV": "busy",
    "SUSPENDED_EVSE": "warn",
    "FINISHING": "busy",
    "FAULTED": "bad",
    "OFFLINE": "bad",
    "UNAVAILABLE": "off",
}

STOP_REASONS = {
    "EVDisconnected": "complete (the vehicle stopped drawing)",
    "Local": "stopped by the user",
    "Remote": "stopped by an operator",
    "DeAuthorized": "out of credit",
    "EmergencyStop": "plug fault",
    "PowerLoss": "power loss",
    "TimeLimit": "time limit",
    "Timeout": "nothing drew power",
    "Other": "other",
}


def money(amount_minor: int, currency: str) -> str:
    """500, "gbp" → ``"5.00 GBP"`` (whole units for zero-decimal currencies)."""
    code = (currency or "").lower()
    if code in ZERO_DECIMAL:
        return f"{amount_minor} {code.upper()}"
    sign = "-" if amount_minor < 0 else ""
    whole, cents = divmod(abs(amount_minor), 100)
    return f"{sign}{whole}.{cents:02d} {code.upper()}".strip()


def day_start_ms(now_ms: int) -> int:
    """Midnight UTC of the day holding ``now_ms``."""
    return now_ms - now_ms % 86_400_000


def _iso(ts_ms: int) -> str | None:
    if ts_ms <= 0:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts_ms / 1000))


def _cost_doc(cost: Cost, currency: str) -> dict[str, Any]:
    return {
        "currency": currency,
        "total_minor": cost.total_minor,
        "energy_minor": str(cost.energy_minor),
        "fee_minor": str(cost.fee_minor),
        "idle_minor": str(cost.idle_minor),
    }


def live_doc(live: LiveSession) -> dict[str, Any]:
    return {
        "session_id": live.session_id,
        "user_id": live.user_id,
        "started_at_ms": live.started_at_ms,
        "energy_kwh": live.energy_mwh / 1e6,
        "energy_mwh": live.energy_mwh,
        "idle_s": live.idle_ms // 1000,
        "cost": _cost_doc(live.cost, live.currency),
        "provisional": live.provisional,
    }


def plug_doc(row: PlugRow, now_ms: int) -> dict[str, Any]:
    return {
        "mac": row.mac,
        "site_id": row.site_id,
        "name": row.name,
        "class": row.plug_class,
        "state": row.state,
        "colour": STATE_COLOURS.get(row.state, "off"),
        "reason": row.reason,
        "relay_on": row.relay_on,
        "power_w": round(row.power_w, 1),
        "last_seen_ms": row.last_seen_ms or None,
        "last_seen_age_s": max(0, (now_ms - row.last_seen_ms) // 1000) if row.last_seen_ms else None,
        "live": row.live,
        "session": live_doc(row.session) if row.session is not None else None,
    }


def session_doc(s: codec.ChargeSession, live: LiveSession | None = None) -> dict[str, Any]:
    active = s.status == codec.ChargeSession.STATUS_ACTIVE
    energy_mwh = live.energy_mwh if live is not None else s.energy_mwh
    doc: dict[str, Any] = {
        "session_id": s.session_id,
        "user_id": s.user_id,
        "plug_mac": s.plug_mac,
        "site_id": s.site_id,
        "status": "active" if active else "completed",
        "started_at_ms": s.started_at_ms,
        "started_at": _iso(s.started_at_ms),
        "ended_at_ms": s.ended_at_ms or None,
        "ended_at": _iso(s.ended_at_ms),
        "energy_kwh": energy_mwh / 1e6,
        "energy_mwh": energy_mwh,
        "idle_s": live.idle_ms // 1000 if live is not None else s.idle_s,
        "cost_minor": live.cost.total_minor if live is not None else s.cost.amount_minor,
        "currency": live.currency if live is not None else s.cost.currency,
        "stop_reason": s.stop_reason,
        "tariff_id": s.tariff_id,
    }
    return doc


def cost_breakdown(s: codec.ChargeSession, tariff: Tariff, live: LiveSession | None) -> Cost | None:
    """The energy / fee / idle components of a session's cost. Live: the hub's own computation.
    Completed: recomputed with the site's tariff, and only if that reproduces the billed total
    exactly (a tariff changed since would give wrong components: then None, the total stands)."""
    if live is not None:
        return live.cost
    if s.status != codec.ChargeSession.STATUS_COMPLETED or tariff.tariff_id != s.tariff_id:
        return None
    cost = session_cost(tariff, s.energy_mwh, s.idle_s * 1000, include_fee=s.stop_reason != "Timeout")
    return cost if cost.total_minor == s.cost.amount_minor else None


def cost_lines(cost: Cost, currency: str) -> dict[str, str]:
    """A cost's components as the session page prints them, each rounded by the tariff's one rule
    (half up, like the billed total), not Python's half-to-even ``round``."""
    return {
        "energy": f"{money(round_minor(cost.energy_minor), currency)} ({cost.energy_wh / 1000:.3f} kWh billed)",
        "fee": money(round_minor(cost.fee_minor), currency),
        "idle": f"{money(round_minor(cost.idle_minor), currency)} ({cost.idle_s} s billed)",
    }


def alert_doc(alert: Alert, now_ms: int) -> dict[str, Any]:
    doc = alert.to_dict()
    doc["age_s"] = max(0, (now_ms - alert.first_at_ms) // 1000)
    return doc


def today_totals(
    sessions: Iterable[codec.ChargeSession], rows: Sequence[PlugRow], now_ms: int
) -> dict[str, Any]:
    """Sessions that ended today (UTC): count, kWh, revenue per currency; and what is charging now."""
    start = day_start_ms(now_ms)
    completed = 0
    energy_mwh = 0
    revenue: dict[str, int] = {}
    for s in sessions:
        if s.status != codec.ChargeSession.STATUS_COMPLETED or s.ended_at_ms < start:
            continue
        completed += 1
        energy_mwh += s.energy_mwh
        cur = s.cost.currency or "?"
        revenue[cur] = revenue.get(cur, 0) + s.cost.amount_minor
    live = [r.session for r in rows if r.session is not None]
    live_revenue: dict[str, int] = {}
    for sess in live:
        live_revenue[sess.currency] = live_revenue.get(sess.currency, 0) + sess.cost.total_minor
    return {
        "day": time.strftime("%Y-%m-%d", time.gmtime(start / 1000)),
        "sessions_completed": completed,
        "energy_kwh": energy_mwh / 1e6,
        "revenue_minor": dict(sorted(revenue.items())),
        "revenue": [money(v, k) for k, v in sorted(revenue.items())],
        "sessions_active": len(live),
        "active_energy_kwh": sum(s.energy_mwh for s in live) / 1e6,
        "active_cost_minor": dict(sorted(live_revenue.items())),
        "power_w": round(sum(r.power_w for r in rows), 1),
        "plugs": len(rows),
    }
