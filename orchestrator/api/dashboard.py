"""The dashboard: runs, a run's stage timeline and thumbnails, per-camera activity.

Server-rendered HTML (autoescaped: camera names and errors are data, not markup). A
person signs in with an API key once; the browser then holds a server-side session's id,
never the key (orchestrator.api.sessions), and the sign-in and sign-out forms carry CSRF
tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment
from markupsafe import Markup

from orchestrator.api import keys, operations_page, schemas
from orchestrator.api import live as live_pages
from orchestrator.api.sessions import DashboardSessions
from orchestrator.store import ApiKey, Clip, Run, Store
from orchestrator.store.models import Role, as_utc

BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>camflow · {{ title }}</title>
{% if live %}<script src="/dashboard/live.js" data-stream="{{ live }}" defer></script>{% endif %}
<style>
 body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
 header{background:#1d2330;color:#fff;padding:10px 24px;display:flex;gap:24px;align-items:center}
 header a{color:#cfd6e4;text-decoration:none} main{padding:20px 24px;max-width:1200px}
 table{border-collapse:collapse;width:100%;background:#fff;margin-bottom:24px}
 th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #e3e6ec} th{background:#eef0f4}
 .badge{padding:2px 8px;border-radius:10px;font-size:12px;color:#fff}
 .succeeded{background:#2f9e44}.failed{background:#d9480f}.running,.pending{background:#1c7ed6}
 .timeline{background:#fff;padding:12px;margin-bottom:24px}
 .lane{display:flex;align-items:center;margin:6px 0}.lane .name{width:110px}
 .track{position:relative;flex:1;height:18px;background:#eef0f4;border-radius:3px}
 .queued{position:absolute;height:18px;background:#c5d3e8;border-radius:3px}
 .ran{position:absolute;height:18px;border-radius:3px}
 .meta{width:330px;padding-left:12px;color:#5c6475;font-size:12px}
 .thumbs{display:flex;flex-wrap:wrap;gap:12px} .thumbs figure{margin:0;background:#fff;padding:6px}
 .error{color:#d9480f} form.login{background:#fff;padding:20px;max-width:520px}
 input[type=password]{width:100%;padding:6px;margin:8px 0}
</style></head><body>
<header><strong>camflow</strong>{% if key %}<a href="/dashboard">runs</a>
{% if key.role == "admin" %}<a href="/dashboard/operations">operations</a>{% endif %}
<span>{{ key.tenant }} · {{ key.role }}</span><a href="/dashboard/logout">sign out</a>{% endif %}
</header><main id="page"{% if live %} data-live{% endif %}>{{ body }}</main></body></html>"""

LOGIN = """<h1>Sign in</h1>
<form class="login" method="post" action="/dashboard/login">
<input type="hidden" name="csrf" value="{{ csrf }}">
<label>API key (customer or admin)<input type="password" name="key" autocomplete="off"></label>
{% if error %}<p class="error">{{ error }}</p>{% endif %}
<button type="submit">Sign in</button></form>"""

# Signing out changes state, so it is a POST with a token only this session's pages
# know; the header's link leads here, so that no page needs to carry the token.
LOGOUT = """<h1>Sign out</h1>
<form class="logout" method="post" action="/dashboard/logout">
<input type="hidden" name="csrf" value="{{ csrf }}">
{% if error %}<p class="error">{{ error }}</p>{% endif %}
<button type="submit">Sign out</button></form>"""

RUNS = """<h1>Runs</h1>
<table id="runs"><tr><th>clip</th><th>camera</th><th>pipeline</th><th>status</th>
<th>created</th><th>seconds</th></tr>
{% for run, clip in runs %}<tr>
<td><a href="/dashboard/runs/{{ run.id }}">{{ clip.key }}</a></td><td>{{ clip.camera }}</td>
<td>{{ run.pipeline }}</td><td><span class="badge {{ run.status }}">{{ run.status }}</span></td>
<td>{{ fmt(run.created_at) }}</td><td>{{ seconds(run) }}</td></tr>
{% else %}<tr><td colspan="6">No runs yet: upload a clip.</td></tr>{% endfor %}</table>
<h2>Cameras</h2>
<table id="cameras"><tr><th>camera</th><th>clips</th><th>last clip</th><th>succeeded</th>
<th>failed</th><th>in progress</th></tr>
{% for camera, row in cameras|dictsort %}<tr><td>{{ camera }}</td><td>{{ row.clips }}</td>
<td>{{ fmt(row.last) }}</td><td>{{ row.succeeded }}</td><td>{{ row.failed }}</td>
<td>{{ row.active }}</td></tr>{% endfor %}</table>"""

RUN = """<h1>{{ clip.key }}</h1>
<p>pipeline <strong>{{ run.pipeline }}</strong> ·
<span class="badge {{ run.status }}" id="status">{{ run.status }}</span> ·
created {{ fmt(run.created_at) }}{% if run.finished_at %} · {{ seconds(run) }} s{% endif %}</p>
{% if run.error %}<p class="error">{{ run.error }}</p>{% endif %}
<h2>Stages</h2><div class="timeline" id="timeline">
{% for lane in lanes %}<div class="lane"><span class="name">{{ lane.stage }}</span>
<div class="track"><div class="queued" style="left:{{ lane.queued_left }}%;width:{{
lane.queued_width }}%"></div><div class="ran {{ lane.status }}" style="left:{{ lane.left
}}%;width:{{ lane.width }}%"></div></div>
<span class="meta">{{ lane.status }} · {{ lane.where }} · {{ lane.accelerator }} ·
{{ lane.seconds }} s{% if lane.attempts > 1 %} · {{ lane.attempts }} attempts{% endif %}</span>
</div>{% endfor %}</div>
{% if summary %}<p>{{ summary.frames }} frames sampled, {{ summary.detections }} detections
in {{ summary.frames_with_detections }} frames.</p>{% endif %}
<h2>Thumbnails</h2><div class="thumbs" id="thumbnails">
{% for thumb in thumbnails %}<figure><img src="{{ thumb.url }}" alt="frame at {{ thumb.t }} s"
width="320"><figcaption>{{ thumb.t }} s</figcaption></figure>
{% else %}<p>None for this run.</p>{% endfor %}</div>"""

env = Environment(autoescape=True)


def _fmt(value: datetime | None) -> str:
    return as_utc(value).strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _seconds(run: Any) -> str:
    if not run.finished_at:
        return ""
    return f"{(as_utc(run.finished_at) - as_utc(run.created_at)).total_seconds():.1f}"


def _span(start: datetime | None, end: datetime | None) -> str:
    return f"{(as_utc(end) - as_utc(start)).total_seconds():.2f}" if start and end else ""


def timeline(run: Any, attempts: list[Any], now: datetime) -> list[dict[str, Any]]:
    """One lane per stage attempt, as percentages of the run's span: pure."""
    start = as_utc(run.created_at)
    end = max(
        [as_utc(run.finished_at or now)]
        + [as_utc(a.finished_at) for a in attempts if a.finished_at]
    )
    span = max((end - start).total_seconds(), 1e-6)

    def pct(at: datetime | None) -> float:
        return round(100 * ((as_utc(at) if at else end) - start).total_seconds() / span, 2)

    lanes = []
    for attempt in attempts:
        queued = pct(attempt.created_at)
        began = pct(attempt.started_at or attempt.finished_at)
        finished = pct(attempt.finished_at)
        lanes.append(
            {
                "stage": attempt.stage,
                "status": str(attempt.state),
                "queued_left": queued,
                "queued_width": max(0.0, round(began - queued, 2)),
                "left": began,
                "width": max(0.5, round(finished - began, 2)),
                "where": attempt.placement or attempt.executor,
                "accelerator": attempt.accelerator,
                "attempts": attempt.tries or 1,
                "seconds": _span(attempt.started_at, attempt.finished_at),
            }
        )
    return lanes


def router(
    store: Store,
    artifacts: Callable[[Run, Clip], list[schemas.Artifact]],
    clock: Callable[[], datetime],
    sessions: DashboardSessions,
    gpu_slots: Mapping[str, int] | None = None,
) -> APIRouter:
    pages = APIRouter(prefix="/dashboard", include_in_schema=False)

    def render(
        title: str, template: str, key: ApiKey | None, live: str = "", **context: Any
    ) -> HTMLResponse:
        body = env.from_string(template).render(fmt=_fmt, seconds=_seconds, **context)
        # The inner page is rendered (and escaped) already: wrap it, don't escape twice.
        page = env.from_string(BASE).render(title=title, key=key, live=live, body=Markup(body))
        return HTMLResponse(page)

    def signed_in(request: Request) -> ApiKey | None:
        key = sessions.current(request)
        return key if key and key.role in (Role.CUSTOMER, Role.ADMIN) else None

    def login_form(request: Request, status: int = 200, error: str = "") -> HTMLResponse:
        token = sessions.login_token(request)
        response = render("sign in", LOGIN, None, error=error, csrf=token)
        response.status_code = status
        sessions.keep_login_token(request, response, token)
        sessions.forget_legacy(request, response)
        return response

    @pages.get("/login")
    def login_page(request: Request) -> HTMLResponse:
        return login_form(request)

    @pages.post("/login")
    def login(request: Request, key: str = Form(""), csrf: str = Form("")) -> Response:
        if not sessions.login_allowed(request, csrf):
            return login_form(
                request,
                403,
                "This sign-in form expired or did not come from this dashboard: "
                "sign in again here.",
            )
        row = keys.verify(store, key.strip())
        if row is None or row.role not in (Role.CUSTOMER, Role.ADMIN):
            return login_form(request, 401, "That is not a live customer or admin key.")
        response = RedirectResponse("/dashboard", status_code=303)
        sessions.sign_in(request, response, row)
        return response

    @pages.get("/logout")
    def logout_page(request: Request) -> Response:
        key, token = signed_in(request), sessions.logout_token(request)
        if key is None or token is None:
            return RedirectResponse("/dashboard/login", status_code=303)
        return render("sign out", LOGOUT, key, csrf=token)

    @pages.post("/logout")
    def logout(request: Request, csrf: str = Form("")) -> Response:
        key = signed_in(request)
        if key is not None and not sessions.logout_allowed(request, csrf):
            response = render(
                "sign out",
                LOGOUT,
                key,
                csrf=sessions.logout_token(request),
                error="That sign-out did not come from this dashboard: use this button.",
            )
            response.status_code = 403
            return response
        response = RedirectResponse("/dashboard/login", status_code=303)
        sessions.sign_out(request, response)
        return response

    @pages.get("")
    def runs(request: Request) -> Response:
        key = signed_in(request)
        if key is None:
            return RedirectResponse("/dashboard/login", status_code=303)
        rows = (
            store.list_runs(limit=100)
            if key.role == Role.ADMIN
            else store.tenant_runs(key.tenant, limit=100)
        )
        cameras: dict[str, dict[str, Any]] = {}
        for run, clip in rows:
            row = cameras.setdefault(
                clip.camera,
                {"clips": set(), "last": None, "succeeded": 0, "failed": 0, "active": 0},
            )
            row["clips"].add(clip.id)
            if row["last"] is None or as_utc(clip.discovered_at) > row["last"]:
                row["last"] = as_utc(clip.discovered_at)
            status = str(run.status)
            row[status if status in ("succeeded", "failed") else "active"] += 1
        for row in cameras.values():
            row["clips"] = len(row["clips"])
        return render("runs", RUNS, key, live=live_pages.STREAM, runs=rows, cameras=cameras)

    @pages.get("/runs/{run_id}")
    def run_page(run_id: str, request: Request) -> Response:
        key = signed_in(request)
        if key is None:
            return RedirectResponse("/dashboard/login", status_code=303)
        found = store.tenant_run(run_id, None if key.role == Role.ADMIN else key.tenant)
        if found is None:
            return render("not found", "<h1>No such run in your tenant</h1>", key)
        run, clip = found
        result = run.result or {}
        thumbnails = [
            {"t": a.t, "url": a.url}
            for a in artifacts(run, clip)
            if isinstance(a, schemas.Thumbnail)
        ]
        lanes = timeline(run, store.attempts_of_run(run.id), clock())
        return render(
            clip.key,
            RUN,
            key,
            live="" if run.finished_at else f"{live_pages.STREAM}?run={run.id}",
            run=run,
            clip=clip,
            lanes=lanes,
            thumbnails=thumbnails,
            summary=result.get("summary"),
        )

    # Pages that update themselves from the event stream, and the operator's view.
    pages.include_router(live_pages.router(store, signed_in))
    pages.include_router(operations_page.router(store, clock, gpu_slots or {}, render, signed_in))
    return pages
