"""Dashboard sign-in: server-side sessions stored hashed, with an expiry, ended by
sign-out and by revoking the key; cookies HttpOnly, SameSite=Lax and Secure over HTTPS;
CSRF tokens on the sign-in and sign-out forms."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlmodel import select

from orchestrator.api.app import create_app
from orchestrator.api.keys import create_key, revoke
from orchestrator.service import Runtime, open_runtime
from orchestrator.settings import Settings
from orchestrator.store import DashboardSession
from orchestrator.store.models import Role
from tests.api_world import seed_clip

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now


@dataclass
class World:
    runtime: Runtime
    clock: Clock
    keys: dict[str, str] = field(default_factory=dict)
    key_ids: dict[str, str] = field(default_factory=dict)

    def client(self, https: bool = False) -> TestClient:
        """A browser of its own (its own cookies) on a new app (settings as they are now)."""
        base = "https://testserver" if https else "http://testserver"
        return TestClient(create_app(self.runtime, clock=self.clock), base_url=base)

    def sessions(self) -> list[DashboardSession]:
        with self.runtime.store.session() as session:
            return list(session.exec(select(DashboardSession)).all())


@pytest.fixture
def world(settings: Settings) -> Iterator[World]:
    with open_runtime(settings) as runtime:
        seed_clip(runtime, "tenant-a", "door")
        made = World(runtime, Clock())
        for name, role, camera in [
            ("customer", Role.CUSTOMER, None),
            ("admin", Role.ADMIN, None),
            ("camera", Role.CAMERA, "door"),
        ]:
            row, text = create_key(runtime.store, "tenant-a", role, camera)
            made.keys[name], made.key_ids[name] = text, row.id
        yield made


def _cookies(response: httpx.Response) -> dict[str, str]:
    """Set-Cookie headers by cookie name, each header as sent."""
    headers = response.headers.get_list("set-cookie")
    return {header.split("=", 1)[0]: header for header in headers}


def _attributes(header: str) -> set[str]:
    return {part.strip().split("=")[0].lower() for part in header.split(";")[1:]}


def _plant(client: TestClient, name: str, value: str, path: str = "/dashboard") -> None:
    """A cookie in the browser as if the server had set it (cookiejar's name for a
    host without a dot is host.local)."""
    client.cookies.set(name, value, domain="testserver.local", path=path)


def _form_token(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]*)"', html)
    assert found, html
    return found.group(1)


def _sign_in(client: TestClient, key: str) -> httpx.Response:
    token = _form_token(client.get("/dashboard/login").text)
    return client.post("/dashboard/login", data={"key": key, "csrf": token}, follow_redirects=False)


def test_signing_in_opens_a_server_side_session_that_holds_no_key(world: World) -> None:
    client = world.client()
    page = client.get("/dashboard/login")
    csrf = _cookies(page)["camflow_csrf"]
    assert {"httponly", "samesite", "path"} <= _attributes(csrf)
    assert "secure" not in _attributes(csrf)  # plain HTTP here
    assert _form_token(page.text) == client.cookies.get("camflow_csrf")

    signed = _sign_in(client, world.keys["customer"])
    assert signed.status_code == 303 and signed.headers["location"] == "/dashboard"
    header = _cookies(signed)["camflow_session"]
    assert "HttpOnly" in header and "SameSite=lax" in header and "Path=/dashboard" in header
    assert "Max-Age=43200" in header  # api.session_seconds: 12 h
    session_id = client.cookies.get("camflow_session")
    assert session_id and world.keys["customer"] not in header
    # Not even the key's secret (everything after its second `_`, which may hold `_`).
    assert world.keys["customer"].split("_", 2)[2] not in header

    [row] = world.sessions()
    assert row.id_hash == hashlib.sha256(session_id.encode()).hexdigest() != session_id
    assert row.key_id == world.key_ids["customer"]
    assert row.expires_at.replace(tzinfo=UTC) == T0 + timedelta(hours=12)
    page = client.get("/dashboard")
    assert page.status_code == 200 and 'id="runs"' in page.text
    # The cookie is the dashboard's: the API never takes it as a credential.
    assert client.get("/v1/clips").status_code == 401


def test_the_sign_in_form_needs_its_csrf_token(world: World) -> None:
    client = world.client()
    key = world.keys["customer"]
    token = _form_token(client.get("/dashboard/login").text)
    for data in (
        {"key": key},  # a form posted from another site: no token
        {"key": key, "csrf": ""},
        {"key": key, "csrf": token[:-1] + ("A" if token[-1] != "A" else "B")},
    ):
        refused = client.post("/dashboard/login", data=data, follow_redirects=False)
        assert refused.status_code == 403, data
        assert "did not come from this dashboard" in refused.text
        assert "camflow_session" not in _cookies(refused)
    # The right token, but no cookie to match it: another site cannot set one.
    stranger = world.client()
    refused = stranger.post(
        "/dashboard/login", data={"key": key, "csrf": token}, follow_redirects=False
    )
    assert refused.status_code == 403
    assert world.sessions() == []


def test_only_live_customer_or_admin_keys_sign_in(world: World) -> None:
    client = world.client()
    for key in (world.keys["camera"], "cfk_0000000000000000_nope", "", "x" * 5000):
        refused = _sign_in(client, key)
        assert refused.status_code == 401 and "not a live customer or admin key" in refused.text
    assert _sign_in(client, world.keys["admin"]).status_code == 303


def test_signing_out_needs_the_sessions_token_and_ends_the_session(world: World) -> None:
    client = world.client()
    _sign_in(client, world.keys["customer"])
    session_id = client.cookies.get("camflow_session")
    # A sign-out posted from elsewhere changes nothing.
    refused = client.post("/dashboard/logout", data={"csrf": "x"}, follow_redirects=False)
    assert refused.status_code == 403
    refused = client.post("/dashboard/logout", follow_redirects=False)
    assert refused.status_code == 403
    assert client.get("/dashboard", follow_redirects=False).status_code == 200
    # The page behind the header's link carries the session's token.
    page = client.get("/dashboard/logout")
    assert 'class="logout"' in page.text
    out = client.post(
        "/dashboard/logout", data={"csrf": _form_token(page.text)}, follow_redirects=False
    )
    assert out.status_code == 303 and out.headers["location"] == "/dashboard/login"
    assert "Max-Age=0" in _cookies(out)["camflow_session"]
    assert world.sessions() == []
    # The old cookie, replayed, is no one.
    replay = world.client()
    _plant(replay, "camflow_session", session_id)
    again = replay.get("/dashboard", follow_redirects=False)
    assert again.status_code == 303 and again.headers["location"] == "/dashboard/login"


def test_a_session_ends_when_it_expires(world: World) -> None:
    client = world.client()
    _sign_in(client, world.keys["customer"])
    world.clock.now = T0 + timedelta(hours=12) - timedelta(seconds=1)
    assert client.get("/dashboard", follow_redirects=False).status_code == 200
    world.clock.now = T0 + timedelta(hours=12)
    assert client.get("/dashboard", follow_redirects=False).status_code == 303
    assert world.sessions() == []  # forgotten once seen expired


def test_a_sign_in_forgets_expired_sessions(world: World) -> None:
    _sign_in(world.client(), world.keys["customer"])
    world.clock.now = T0 + timedelta(days=1)
    _sign_in(world.client(), world.keys["admin"])
    assert [s.key_id for s in world.sessions()] == [world.key_ids["admin"]]


def test_revoking_the_key_ends_its_sessions(world: World) -> None:
    client = world.client()
    _sign_in(client, world.keys["customer"])
    assert client.get("/dashboard", follow_redirects=False).status_code == 200
    assert revoke(world.runtime.store, world.key_ids["customer"])
    assert client.get("/dashboard", follow_redirects=False).status_code == 303
    assert world.sessions() == []


def test_a_session_id_planted_before_sign_in_is_replaced(world: World) -> None:
    client = world.client()
    planted = "A" * 43
    _plant(client, "camflow_session", planted)
    _sign_in(client, world.keys["customer"])
    assert client.cookies.get("camflow_session") not in (None, planted)
    assert [s.id_hash for s in world.sessions()] != [hashlib.sha256(planted.encode()).hexdigest()]


def test_cookies_are_secure_over_https_or_when_the_settings_say_so(world: World) -> None:
    client = world.client(https=True)
    page = client.get("/dashboard/login")
    assert "secure" in _attributes(_cookies(page)["camflow_csrf"])
    signed = _sign_in(client, world.keys["customer"])
    assert "secure" in _attributes(_cookies(signed)["camflow_session"])

    world.runtime.settings.api.secure_cookies = True  # TLS ends at a proxy that hides it
    plain = world.client()
    assert "secure" in _attributes(_cookies(plain.get("/dashboard/login"))["camflow_csrf"])


def test_the_key_cookie_of_0_1_signs_no_one_in_and_is_cleared(world: World) -> None:
    client = world.client()
    _plant(client, "camflow_key", world.keys["customer"], path="/")
    page = client.get("/dashboard", follow_redirects=False)
    assert page.status_code == 303
    login = client.get("/dashboard/login")
    assert 'camflow_key=""' in _cookies(login)["camflow_key"]
    assert "Max-Age=0" in _cookies(login)["camflow_key"]


@pytest.fixture
def app(world: World) -> FastAPI:
    """One app for every example hypothesis tries (each with a browser of its own)."""
    return create_app(world.runtime, clock=world.clock)


TEXT = st.text(max_size=80)
#: What a cookie's value may hold (RFC 6265 cookie-octets).
COOKIE_CHARACTERS = st.characters(
    min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='";,\\'
)


@hypothesis_settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,
)
@given(
    key=TEXT,
    csrf=TEXT,
    session=st.one_of(st.none(), st.text(alphabet=COOKIE_CHARACTERS, max_size=60)),
    run_id=st.text(min_size=1, max_size=40),
    login=st.booleans(),
)
def test_nothing_sent_to_the_dashboard_makes_a_500(
    app: FastAPI, world: World, key: str, csrf: str, session: str | None, run_id: str, login: bool
) -> None:
    client = TestClient(app)
    if session:
        _plant(client, "camflow_session", session)
        _plant(client, "camflow_csrf", session)
    if login:
        _sign_in(client, world.keys["customer"])
    answers: list[Any] = [
        client.post("/dashboard/login", data={"key": key, "csrf": csrf}, follow_redirects=False),
        client.post("/dashboard/logout", data={"csrf": csrf}, follow_redirects=False),
        client.get("/dashboard/runs/" + quote(run_id, safe="")),
        client.get("/dashboard/logout", follow_redirects=False),
        client.get("/dashboard", follow_redirects=False),
    ]
    for answer in answers:
        assert answer.status_code < 500, (answer.request.url, answer.text)
