"""Chart reads over InfluxQL (``GET /query``): InfluxDB 1.x, and InfluxDB 2 and 3 through their v1 query API.

The console's charts ask the time-series port for a plug's or a site's mean power per bucket
``[start, start + step)`` (see :mod:`chargectl.services.adapters.timeseries`). Against a server that
speaks the Prometheus API (VictoriaMetrics) the Influx sink asks ``/api/v1/query_range``; an InfluxDB
server does not serve that API, so with ``[influx] chart_query = "influxql"`` the sink asks these
queries instead, over the points it wrote itself (measurement ``plug``, tags ``site_id`` and ``mac``,
field ``power_w``):

- a plug: ``mean(power_w)`` of its points, ``GROUP BY time(step)``;
- a site: the sum over its plugs of each plug's mean in the bucket (a subquery grouped by ``mac``), the
  same total the SQLite series and the Prometheus query give.

InfluxQL's ``GROUP BY time`` buckets start at multiples of the step since the epoch, the same buckets
as the other two. Tag values are quoted as InfluxQL string literals, so a hostile MAC or site id
cannot end the literal; the token is sent as a header and never appears in an error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chargectl.common.errors import StoreError
from chargectl.services.adapters.timeseries import PowerPoint, check_window

if TYPE_CHECKING:
    from chargectl.services.adapters.influx_sink import InfluxSettings

__all__ = ["influxql_plug_power", "influxql_site_power", "influxql_str", "read_json"]


def influxql_str(value: str) -> str:
    """``value`` as an InfluxQL single-quoted string literal (backslashes and quotes escaped)."""
    cleaned = "".join(ch for ch in value if ch >= " ")  # no control characters: they match no tag
    return "'" + cleaned.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _window(since_ms: int, until_ms: int, step_ms: int) -> str:
    """The WHERE clause on time: the points in ``[since_ms, until_ms)``, as the SQLite series reads them
    (its first and last buckets hold only the points inside the window)."""
    check_window(since_ms, until_ms, step_ms)
    return f"time >= {since_ms}ms AND time < {until_ms}ms"


def influxql_plug_power(
    settings: InfluxSettings, mac: str, since_ms: int, until_ms: int, step_ms: int
) -> list[PowerPoint]:
    when = _window(since_ms, until_ms, step_ms)
    query = (
        f'SELECT mean("power_w") FROM "plug" WHERE "mac" = {influxql_str(mac)} AND {when} '
        f"GROUP BY time({step_ms}ms) fill(none)"
    )
    return _points(settings, query)


def influxql_site_power(
    settings: InfluxSettings, site_id: str, since_ms: int, until_ms: int, step_ms: int
) -> list[PowerPoint]:
    when = _window(since_ms, until_ms, step_ms)
    query = (
        'SELECT sum("m") FROM (SELECT mean("power_w") AS "m" FROM "plug" '
        f'WHERE "site_id" = {influxql_str(site_id)} AND {when} '
        f'GROUP BY time({step_ms}ms), "mac" fill(none)) '
        f"WHERE {when} GROUP BY time({step_ms}ms) fill(none)"
    )
    return _points(settings, query)


def _points(settings: InfluxSettings, query: str) -> list[PowerPoint]:
    database = settings.database if settings.api == "v1" else settings.bucket
    body = read_json(settings, "/query", {"db": database, "q": query, "epoch": "ms"})
    try:
        return _parse(body)
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise StoreError(f"time series read returned an unexpected answer: {type(exc).__name__}") from exc


def read_json(settings: InfluxSettings, path: str, params: dict[str, str]) -> Any:
    """``GET path`` on the chart-query server (``query_url``, else ``url``) with the token as a header;
    its JSON answer. Any failure is a ``StoreError`` that never holds the token."""
    import httpx

    url = f"{(settings.query_url or settings.url).rstrip('/')}{path}"
    headers = {"Authorization": f"Token {settings.token}"} if settings.token else {}
    try:
        resp = httpx.get(url, params=params, headers=headers, timeout=settings.timeout_s)
    except httpx.HTTPError as exc:
        raise StoreError(f"time series read failed: {type(exc).__name__}") from exc
    if resp.status_code != 200:
        raise StoreError(f"time series read returned HTTP {resp.status_code}")
    try:
        return resp.json()
    except ValueError as exc:
        raise StoreError(f"time series read returned an unexpected answer: {type(exc).__name__}") from exc


def _parse(body: Any) -> list[PowerPoint]:
    """The points of a ``/query`` answer with one statement (``{"results": [{"series": [...]}]}``)."""
    if "error" in body:
        raise StoreError(f"time series read refused: {str(body['error'])[:200]}")
    result = body["results"][0]
    if "error" in result:
        raise StoreError(f"time series read refused: {str(result['error'])[:200]}")
    points: dict[int, float] = {}
    for series in result.get("series") or ():
        for ts, value in series["values"]:
            if value is not None:
                points[int(ts)] = points.get(int(ts), 0.0) + float(value)
    return [PowerPoint(ts, points[ts]) for ts in sorted(points)]
