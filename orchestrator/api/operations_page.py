"""The operations page (``/dashboard/operations``, admin keys only): the whole system
over the last 24 hours, as charts drawn on the server (orchestrator.api.charts) from
the store's summaries (orchestrator.operations). It keeps itself current from the
dashboard's event stream (orchestrator.api.live)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup

from orchestrator.api import charts
from orchestrator.api.charts import Series
from orchestrator.api.live import STREAM
from orchestrator.operations import MAX_ROWS, Overview, overview
from orchestrator.store import ApiKey, Store
from orchestrator.store.models import Role

PATH = "/operations"


class Render(Protocol):
    """The dashboard's page renderer: a body template inside its frame."""

    def __call__(
        self, title: str, template: str, key: ApiKey | None, live: str = "", **context: Any
    ) -> HTMLResponse: ...


OPERATIONS = """<style>
 .ops{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:16px}
 .ops section{background:#fff;padding:12px 16px} .ops h2{font-size:15px;margin:0 0 6px}
 .ops .figures{color:#5c6475;font-size:12px;margin:6px 0 0} .ops .wide{grid-column:1/-1}
 .ops table{margin:0} .ops td.count{text-align:right;width:60px}
 .ops .runs a{margin-right:6px;font-family:ui-monospace,monospace;font-size:12px;
  white-space:nowrap}
</style>
<h1>Operations</h1>
<p class="figures">The last 24 hours, every tenant, as of {{ fmt(o.now) }} UTC.</p>
<div class="ops">
<section id="throughput" class="wide"><h2>Clips per minute</h2>{{ chart.throughput }}
<p class="figures">{{ o.throughput.succeeded }} succeeded · {{ o.throughput.failed }} failed
{%- if o.throughput.cancelled %} · {{ o.throughput.cancelled }} cancelled{% endif %}
{%- if o.throughput.truncated %} · counted from the newest {{ limit }} runs only{% endif %}</p>
</section>
<section id="stages"><h2>Stage duration, p50 and p95</h2>{{ chart.stages }}
<p class="figures">{% for s in o.stages %}{{ s.stage }}: {{ s.count }}
{{- " attempt" if s.count == 1 else " attempts" }}
{{- ", " if not loop.last }}{% else %}No stage attempt finished in this window.{% endfor %}</p>
</section>
<section id="load"><h2>Attempts queued and running, by place and accelerator</h2>{{ chart.load }}
</section>
<section id="gpu"><h2>GPU slots in use</h2>{{ chart.slots }}
<h2>Wait for a GPU</h2>{{ chart.waits }}
<p class="figures">{{ o.gpu_waits.count }} attempts started on a GPU;
{{ o.gpu_waits.waiting_now }} placed and waiting for one now
{%- if o.gpu_waits.truncated %}; from the newest attempts only{% endif %}.</p>
</section>
<section id="watcher"><h2>Watcher lag: upload to record</h2>{{ chart.watcher }}
<p class="figures">{% if o.watcher.last_recorded_at %}Last clip recorded
{{ dur(o.watcher.seconds_since_last) }} ago · {{ o.watcher.clips }} clips
{%- for source, n in o.watcher.by_source|dictsort %} · {{ n }} by {{ source }}{% endfor %}
{%- if o.watcher.p50 is not none %} · p50 {{ dur(o.watcher.p50) }}, p95
{{ dur(o.watcher.p95) }}, longest {{ dur(o.watcher.longest) }}{% endif %}
{%- else %}No clip recorded in this window.{% endif %}</p>
</section>
<section id="failures" class="wide"><h2>Top failure reasons</h2>
<table><tr><th>reason</th><th>runs</th><th>last</th><th>newest runs</th></tr>
{% for f in o.failures %}<tr><td title="{{ f.example }}">{{ f.reason }}</td>
<td class="count">{{ f.count }}</td><td>{{ fmt(f.last_at) }}</td>
<td class="runs">{% for run_id in f.run_ids -%}
<a href="/dashboard/runs/{{ run_id }}">{{ run_id }}</a>{% endfor %}</td></tr>
{% else %}<tr><td colspan="4">No run failed in this window.</td></tr>{% endfor %}</table>
</section>
</div>"""


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    if value >= 120:
        return f"{value / 60:.0f} min"
    return f"{value:.1f} s"


def draw(o: Overview) -> dict[str, Markup]:
    """The page's charts, from the summaries: pure."""
    minutes = o.throughput.minutes
    throughput = charts.time_lines(
        "Clips finished per minute, last 24 hours",
        [m.at for m in minutes],
        [
            Series("succeeded", [m.succeeded for m in minutes]),
            Series("failed", [m.failed for m in minutes]),
        ],
        description=(
            f"Runs finished each minute from {o.since:%H:%M} to {o.now:%H:%M} UTC: "
            f"{o.throughput.succeeded} succeeded and {o.throughput.failed} failed, at most "
            f"{max((m.succeeded for m in minutes), default=0)} succeeded and "
            f"{max((m.failed for m in minutes), default=0)} failed in one minute."
        ),
        width=1120,
        height=240,
    )
    stages = charts.bars(
        "Stage duration p50 and p95",
        [s.stage for s in o.stages],
        [Series("p50", [s.p50 for s in o.stages]), Series("p95", [s.p95 for s in o.stages])],
        unit=" s",
        description="; ".join(
            f"{s.stage}: p50 {s.p50:.2f} s, p95 {s.p95:.2f} s over {s.count} attempts"
            for s in o.stages
        ),
    )
    load = charts.bars(
        "Attempts queued and running",
        [f"{row.placement} · {row.accelerator}" for row in o.load],
        [
            Series("queued", [row.queued for row in o.load]),
            Series("running", [row.running for row in o.load]),
        ],
        stacked=True,
        description="; ".join(
            f"{row.placement} {row.accelerator}: {row.queued} queued, {row.running} running"
            for row in o.load
        )
        or "Nothing queued or running.",
        none="Nothing queued or running now.",
    )
    slots = charts.bars(
        "GPU slots in use",
        [row.placement for row in o.gpu_slots],
        [
            Series("in use", [row.in_use for row in o.gpu_slots]),
            Series("free", [max(0, (row.total or 0) - row.in_use) for row in o.gpu_slots]),
        ],
        stacked=True,
        description="; ".join(
            f"{row.placement}: {row.in_use} of {row.total if row.total is not None else '?'}"
            for row in o.gpu_slots
        )
        or "No GPUs are configured and none is in use.",
        none="No GPUs are configured and none is in use.",
    )
    w = o.gpu_waits
    waits = (
        charts.bars(
            "Wait for a GPU",
            ["p50", "p95", "longest"],
            [Series("longest", [w.p50 or 0.0, w.p95 or 0.0, w.longest or 0.0])],
            unit=" s",
            description=(
                f"{w.count} attempts started on a GPU; waited p50 {_seconds(w.p50)}, "
                f"p95 {_seconds(w.p95)}, longest {_seconds(w.longest)}"
            ),
        )
        if w.count
        else charts.empty("Wait for a GPU", "No attempt started on a GPU in this window.")
    )
    buckets = o.watcher.buckets
    watcher = charts.time_lines(
        "Longest wait from upload to record, per 10 minutes",
        [b.at for b in buckets],
        [Series("longest", [b.longest for b in buckets])],
        unit=" s",
        description=(
            f"{o.watcher.clips} clips recorded; longest wait "
            f"{_seconds(o.watcher.longest)}, p95 {_seconds(o.watcher.p95)}"
        ),
    )
    return {
        "throughput": throughput,
        "stages": stages,
        "load": load,
        "slots": slots,
        "waits": waits,
        "watcher": watcher,
    }


def router(
    store: Store,
    clock: Callable[[], datetime],
    gpu_slots: Mapping[str, int],
    render: Render,
    signed_in: Callable[[Request], ApiKey | None],
) -> APIRouter:
    """The page, for inclusion under ``/dashboard``."""
    pages = APIRouter(include_in_schema=False)

    @pages.get(PATH)
    def operations_page(request: Request) -> Response:
        key = signed_in(request)
        if key is None:
            return RedirectResponse("/dashboard/login", status_code=303)
        if key.role != Role.ADMIN:
            response = render(
                "operations",
                "<h1>Operations</h1><p>This page is for admin keys: it shows every "
                "tenant's work. Sign in with an admin key to see it.</p>",
                key,
            )
            response.status_code = 403
            return response
        summary = overview(store, clock(), gpu_slots)
        return render(
            "operations",
            OPERATIONS,
            key,
            live=f"{STREAM}?operations=true",
            o=summary,
            chart=draw(summary),
            dur=_seconds,
            limit=MAX_ROWS,
        )

    return pages
