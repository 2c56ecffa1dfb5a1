"""The console's HTML: the overview (served complete, so it reads without JavaScript) and a session
page. Every value from the network is escaped. The small script only refreshes what is already there
from the JSON API (text via ``textContent``, charts as SVG the server drew)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from html import escape
from typing import Any

from chargectl.services.console.views import STOP_REASONS, money

__all__ = ["CSS", "SCRIPT", "login_page", "overview_page", "session_page"]

CSS = """
:root{--ok:#1a7f37;--busy:#0969da;--warn:#9a6700;--bad:#cf222e;--off:#6e7781;--fg:#1f2328;--mute:#59636e;
--bg:#fff;--panel:#f6f8fa;--line:#d1d9e0}
*{box-sizing:border-box}body{margin:0;font:14px/1.4 system-ui,sans-serif;color:var(--fg);background:var(--bg)}
header{display:flex;flex-wrap:wrap;gap:.5rem 1.5rem;align-items:baseline;padding:.75rem 1rem;
border-bottom:1px solid var(--line);background:var(--panel)}
header h1{font-size:1.1rem;margin:0}header .live{color:var(--mute);font-size:.85rem}
header .live.stale{color:var(--bad);font-weight:600}
main{padding:1rem;max-width:1400px;margin:0 auto}
section{margin-bottom:1.5rem}h2{font-size:1rem;margin:.25rem 0 .5rem}
.totals{display:flex;flex-wrap:wrap;gap:.5rem}.totals div{background:var(--panel);border:1px solid var(--line);
border-radius:6px;padding:.4rem .7rem}.totals b{display:block;font-size:1.05rem}
.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid var(--line);white-space:nowrap}
th{font-size:.8rem;color:var(--mute);font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
code{font-size:.85rem}
.state{display:inline-block;padding:0 .45rem;border-radius:1rem;color:#fff;font-size:.8rem;font-weight:600}
.state.ok{background:var(--ok)}.state.busy{background:var(--busy)}.state.warn{background:var(--warn)}
.state.bad{background:var(--bad)}.state.off{background:var(--off)}
ul.alerts{list-style:none;padding:0;margin:0}ul.alerts li{padding:.3rem .5rem;border-left:4px solid var(--warn);
background:var(--panel);margin-bottom:.3rem}ul.alerts li.critical{border-color:var(--bad)}
ul.alerts li.info{border-color:var(--busy)}.mute{color:var(--mute)}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:.75rem;margin-top:.75rem}
.chartbox{border:1px solid var(--line);border-radius:6px;padding:.25rem}
svg.chart{width:100%;height:auto;display:block}svg.chart .line{stroke:var(--busy);stroke-width:1.8}svg.chart .dot{fill:var(--busy)}
svg.chart .grid{stroke:var(--line);stroke-width:1}svg.chart text{font:11px system-ui,sans-serif;fill:var(--mute)}
svg.chart .title{fill:var(--fg);font-weight:600}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem}dl.facts dt{color:var(--mute)}
dl.facts dd{margin:0}
form.login{max-width:22rem;margin:4rem auto;display:grid;gap:.5rem}
form.login input{font:inherit;padding:.4rem}form.login button{font:inherit;padding:.4rem}
.error{color:var(--bad)}
@media (max-width:700px){main{padding:.5rem}th.wide,td.wide{display:none}header{padding:.5rem}}
"""

# Refreshes rows in place from /api/plugs, alerts and totals from /api/alerts and /api/summary, and
# the charts' SVG; a plug that appears or disappears reloads the page (the server renders the rows).
SCRIPT = """
(function(){
 "use strict";
 var cfg=document.body.dataset, refresh=Number(cfg.refreshMs)||2000, chartMs=Number(cfg.chartMs)||15000;
 var liveEl=document.getElementById("live");
 function get(url){return fetch(url,{credentials:"same-origin",cache:"no-store"}).then(function(r){
   if(!r.ok){throw new Error("HTTP "+r.status);}return r;});}
 function set(row,field,text){var el=row.querySelector('[data-field="'+field+'"]');
   if(el&&el.textContent!==text){el.textContent=text;}}
 function age(s){if(s===null||s===undefined){return "never";}if(s<60){return s+" s ago";}
   if(s<3600){return Math.floor(s/60)+" min ago";}return Math.floor(s/3600)+" h ago";}
 function money(minor,cur){if(cur==="jpy"){return minor+" JPY";}var neg=minor<0;minor=Math.abs(minor);
   return (neg?"-":"")+Math.floor(minor/100)+"."+String(minor%100).padStart(2,"0")+" "+cur.toUpperCase();}
 function plugs(list){
   var rows=document.querySelectorAll("tr[data-mac]"), seen={};
   rows.forEach(function(r){seen[r.dataset.mac]=r;});
   if(list.length!==rows.length||list.some(function(p){return !seen[p.mac];})){location.reload();return;}
   list.forEach(function(p){var r=seen[p.mac];
     var st=r.querySelector('[data-field="state"]');
     if(st){st.textContent=p.state;st.className="state "+p.colour;}
     set(r,"power",p.power_w.toFixed(1)+" W");
     set(r,"relay",p.relay_on===null?"?":(p.relay_on?"on":"off"));
     set(r,"seen",age(p.last_seen_age_s));
     var s=p.session;
     set(r,"user",s?s.user_id:"");
     set(r,"kwh",s?s.energy_kwh.toFixed(3):"");
     set(r,"cost",s?money(s.cost.total_minor,s.cost.currency):"");
     var link=r.querySelector('[data-field="session"]');
     if(link){if(s){link.href="/sessions/"+encodeURIComponent(s.session_id);link.textContent="session";}
       else{link.removeAttribute("href");link.textContent="";}}
   });
 }
 function alerts(list){var ul=document.getElementById("alerts");if(!ul){return;}
   while(ul.firstChild){ul.removeChild(ul.firstChild);}
   if(!list.length){var none=document.createElement("li");none.className="info";none.textContent="No open alerts.";
     ul.appendChild(none);return;}
   list.forEach(function(a){var li=document.createElement("li");li.className=a.severity;
     li.textContent=a.kind+" · "+a.subject+" · "+a.message+" · for "+age(a.age_s).replace(" ago","")+
       (a.count>1?" · ×"+a.count:"");ul.appendChild(li);});}
 function totals(t){Object.keys(t).forEach(function(k){
   var el=document.querySelector('[data-total="'+k+'"]');if(!el){return;}var v=t[k];
   if(k==="energy_kwh"||k==="active_energy_kwh"){v=v.toFixed(3)+" kWh";}
   else if(k==="power_w"){v=v.toFixed(1)+" W";}
   else if(Array.isArray(v)){v=v.length?v.join(", "):"0";}
   el.textContent=String(v);});}
 function tick(){
   Promise.all([get("/api/plugs").then(function(r){return r.json();}),
                get("/api/alerts").then(function(r){return r.json();}),
                get("/api/summary").then(function(r){return r.json();})])
   .then(function(res){plugs(res[0].plugs);alerts(res[1].alerts);totals(res[2].today);
     liveEl.textContent="live · updated "+new Date().toLocaleTimeString();liveEl.classList.remove("stale");})
   .catch(function(e){
     if(e.message==="HTTP 401"){location.assign("/login");return;}  // signed out (token changed)
     liveEl.textContent="not updating ("+e.message+")";liveEl.classList.add("stale");})
   .then(function(){setTimeout(tick,refresh);});
 }
 function charts(){
   var boxes=document.querySelectorAll("[data-chart]");
   Promise.all(Array.prototype.map.call(boxes,function(b){
     return get(b.dataset.chart).then(function(r){return r.text();}).then(function(svg){b.innerHTML=svg;});
   })).catch(function(){}).then(function(){setTimeout(charts,chartMs);});
 }
 if(document.querySelector("tr[data-mac]")||document.getElementById("alerts")){setTimeout(tick,refresh);}
 setTimeout(charts,chartMs);
})();
"""


def _layout(title: str, body: str, *, refresh_ms: int = 0, chart_ms: int = 0, script: bool = True) -> str:
    data = f' data-refresh-ms="{refresh_ms}" data-chart-ms="{chart_ms}"' if script else ""
    js = f"<script>{SCRIPT}</script>" if script else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>"
        f"<body{data}>{body}{js}</body></html>"
    )


def _age(seconds: int | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def _clock(ts_ms: int | None) -> str:
    if not ts_ms:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts_ms / 1000))


def _relay(on: bool | None) -> str:
    return "?" if on is None else ("on" if on else "off")


def _plug_row(p: dict[str, Any]) -> str:
    s = p["session"]
    mac = escape(p["mac"])
    user = kwh = cost = ""
    session_link = '<a data-field="session"></a>'
    if s:
        user = escape(s["user_id"])
        kwh = f"{s['energy_kwh']:.3f}"
        cost = escape(money(s["cost"]["total_minor"], s["cost"]["currency"]))
        session_link = f'<a data-field="session" href="/sessions/{escape(s["session_id"])}">session</a>'
    return (
        f'<tr data-mac="{mac}"><td><code>{mac}</code></td>'
        f'<td class="wide">{escape(p["name"]) or "—"}</td><td class="wide">{escape(p["class"])}</td>'
        f'<td><span data-field="state" class="state {escape(p["colour"])}" title="{escape(p["reason"])}">'
        f"{escape(p['state'])}</span></td>"
        f'<td class="num" data-field="power">{p["power_w"]:.1f} W</td>'
        f'<td data-field="relay">{_relay(p["relay_on"])}</td>'
        f'<td class="wide" data-field="seen">{_age(p["last_seen_age_s"])}</td>'
        f'<td data-field="user">{user}</td><td class="num" data-field="kwh">{kwh}</td>'
        f'<td class="num" data-field="cost">{cost}</td><td>{session_link}</td></tr>'
    )


def _alert_items(alerts: Sequence[dict[str, Any]]) -> str:
    if not alerts:
        return '<li class="info">No open alerts.</li>'
    out = []
    for a in alerts:
        count = f" · ×{a['count']}" if a["count"] > 1 else ""
        out.append(
            f'<li class="{escape(a["severity"])}">{escape(a["kind"])} · {escape(a["subject"])} · '
            f"{escape(a['message'])} · for {_age(a['age_s']).removesuffix(' ago')}{count}</li>"
        )
    return "".join(out)


def _totals(t: dict[str, Any]) -> str:
    revenue = ", ".join(t["revenue"]) or "0"
    items = [
        ("Sessions today", "sessions_completed", str(t["sessions_completed"])),
        ("kWh today", "energy_kwh", f"{t['energy_kwh']:.3f} kWh"),
        ("Revenue today", "revenue", revenue),
        ("Charging now", "sessions_active", str(t["sessions_active"])),
        ("kWh in progress", "active_energy_kwh", f"{t['active_energy_kwh']:.3f} kWh"),
        ("Drawing now", "power_w", f"{t['power_w']:.1f} W"),
    ]
    return "".join(
        f'<div><span class="mute">{label}</span><b data-total="{key}">{escape(value)}</b></div>'
        for label, key, value in items
    )


def overview_page(
    *,
    now_ms: int,
    sites: Sequence[tuple[str, str]],
    plugs: Sequence[dict[str, Any]],
    totals: dict[str, Any],
    alerts: Sequence[dict[str, Any]],
    site_charts: dict[str, str],
    plug_charts: dict[str, str],
    refresh_ms: int,
    chart_ms: int,
    logout: bool,
) -> str:
    head = (
        "<header><h1>chargectl console</h1>"
        f'<span id="live" class="live">rendered {_clock(now_ms)}</span>'
        + ('<form method="post" action="/logout"><button>Log out</button></form>' if logout else "")
        + "</header>"
    )
    body = [
        head,
        "<main>",
        f'<section><h2>Today ({escape(totals["day"])}, UTC)</h2><div class="totals">{_totals(totals)}</div></section>',
    ]
    body.append(
        f'<section><h2>Open alerts</h2><ul id="alerts" class="alerts">{_alert_items(alerts)}</ul></section>'
    )
    header_row = (
        '<tr><th>MAC</th><th class="wide">Name</th><th class="wide">Class</th><th>State</th><th>Power</th>'
        '<th>Relay</th><th class="wide">Last seen</th><th>User</th><th>kWh</th><th>Cost</th><th></th></tr>'
    )
    if not sites:
        body.append('<section><h2>Plugs</h2><p class="mute">No plugs have reported yet.</p></section>')
    for site_id, name in sites:
        rows = [p for p in plugs if p["site_id"] == site_id]
        title = f'{escape(name)} <span class="mute">({escape(site_id)})</span>' if name else escape(site_id)
        body.append(
            f'<section class="site" data-site="{escape(site_id)}"><h2>{title} · {len(rows)} plugs</h2>'
        )
        body.append(f'<div class="scroll"><table class="plugs"><thead>{header_row}</thead><tbody>')
        body.extend(_plug_row(p) for p in rows)
        body.append("</tbody></table></div>")
        body.append('<div class="charts">')
        site_url = f"/charts/site/{escape(site_id)}.svg"
        body.append(f'<div class="chartbox" data-chart="{site_url}">{site_charts.get(site_id, "")}</div>')
        for p in rows:
            url = f"/charts/plug/{escape(p['mac'])}.svg"
            body.append(f'<div class="chartbox" data-chart="{url}">{plug_charts.get(p["mac"], "")}</div>')
        body.append("</div></section>")
    body.append("</main>")
    return _layout("chargectl console", "".join(body), refresh_ms=refresh_ms, chart_ms=chart_ms)


def session_page(doc: dict[str, Any], breakdown: dict[str, str] | None, chart: str, *, logout: bool) -> str:
    currency = doc["currency"]
    facts = [
        ("Session", f"<code>{escape(doc['session_id'])}</code>"),
        ("Status", escape(doc["status"])),
        ("User", escape(doc["user_id"])),
        ("Plug", f"<code>{escape(doc['plug_mac'])}</code> at {escape(doc['site_id'])}"),
        ("Started", _clock(doc["started_at_ms"])),
        ("Ended", _clock(doc["ended_at_ms"])),
        ("Energy", f"{doc['energy_kwh']:.3f} kWh"),
        ("Idle", f"{doc['idle_s']} s"),
        ("Cost", escape(money(doc["cost_minor"], currency))),
    ]
    if breakdown is not None:
        facts += [
            ("· energy", escape(breakdown["energy"])),
            ("· session fee", escape(breakdown["fee"])),
            ("· idle", escape(breakdown["idle"])),
        ]
    else:
        facts.append(("· breakdown", "not available (the tariff changed since this session was billed)"))
    reason = doc["stop_reason"]
    facts.append(("Stop reason", escape(f"{reason}: {STOP_REASONS.get(reason, reason)}") if reason else "—"))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    body = (
        '<header><h1><a href="/">chargectl console</a> · session</h1><span id="live" class="live"></span>'
        + ('<form method="post" action="/logout"><button>Log out</button></form>' if logout else "")
        + f'</header><main><section><dl class="facts">{dl}</dl></section>'
        f'<section><h2>Power</h2><div class="chartbox">{chart}</div></section></main>'
    )
    return _layout(f"session {doc['session_id']}", body, script=False)


def login_page(error: str = "") -> str:
    err = f'<p class="error">{escape(error)}</p>' if error else ""
    body = (
        '<form class="login" method="post" action="/login"><h1>chargectl console</h1>'
        '<label for="token">Console token</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>'
        f'{err}<button type="submit">Sign in</button></form>'
    )
    return _layout("chargectl console: sign in", body, script=False)
