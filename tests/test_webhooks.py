"""Signed webhooks: a real HTTP receiver verifies each delivery with the
`standardwebhooks` package, as a customer's would; retries keep their webhook-id; the
outbox survives a restart; the SSRF guard refuses what it must; tenants see only
their own endpoints and deliveries."""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select
from standardwebhooks import Webhook, WebhookVerificationError
from typer.testing import CliRunner

from orchestrator.api.app import create_app
from orchestrator.api.keys import create_key
from orchestrator.api.webhooks import EventType
from orchestrator.cli.main import app as cli
from orchestrator.domain.layout import upload_key
from orchestrator.service import Service, drive, open_runtime
from orchestrator.settings import Settings, WebhookSettings
from orchestrator.store import Clip, Run, Store
from orchestrator.store.models import Role, RunStatus, utcnow
from orchestrator.store.webhooks import EVENT_TYPES, DeliveryState, WebhookDelivery
from orchestrator.webhooks import signing
from orchestrator.webhooks.delivery import DeliveryWorker
from orchestrator.webhooks.outbox import Outbox
from orchestrator.webhooks.schedule import RetrySchedule, Sent, after_attempt
from orchestrator.webhooks.targets import Policy, TargetRefused, check, parse, refusal, resolve
from tests.conftest import SampleClips

#: What the tests' receivers listen on: loopback, which only an operator may allow.
LOOPBACK = ["127.0.0.0/8", "::1/128"]


def _settings(**overrides: Any) -> WebhookSettings:
    values: dict[str, Any] = {
        "allowed_networks": LOOPBACK,
        "timeout_seconds": 2,
        "retry_base_seconds": 0.05,
        "retry_max_seconds": 0.2,
        **overrides,
    }
    return WebhookSettings(**values)


# --- a receiver, as a customer would run one ------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    path: str


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 that verifies each delivery with standardwebhooks
    and answers what ``answers`` says (200 once it runs out)."""

    secret: str = ""
    answers: list[int] = field(default_factory=list)
    got: list[Received] = field(default_factory=list)
    verified: list[Any] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/camflow?src=test"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = dict(self.headers.items())
                receiver.got.append(Received(headers, body, self.path))
                try:
                    receiver.verified.append(Webhook(receiver.secret).verify(body, headers))
                except WebhookVerificationError as exc:
                    receiver.refused.append(str(exc))
                status = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok" if status < 300 else b"no")

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver().start()
    yield made
    made.stop()


# --- a store with runs to finish ----------------------------------------------------


def _finished_run(
    store: Store, tenant: str, n: int, status: RunStatus = RunStatus.SUCCEEDED
) -> Run:
    clip = Clip(
        id=f"c-{tenant[:4]}{n:012d}",
        bucket="ingest",
        key=f"{tenant}/door/2026/03/01/12000{n}.mp4",
        etag=f"e{n}",
        size=10,
        tenant=tenant,
        camera="door",
    )
    store.record_clips([clip])
    run = Run(id=f"r-{tenant[:4]}{n:012d}", clip_id=clip.id, pipeline="faces")
    store.plan(clip.id, [run])
    result = {"status": str(status), "summary": {"frames": 20, "labels": {"face": 3}}}
    error = None if status == RunStatus.SUCCEEDED else "stage decode failed: not a video"
    assert store.finish_run(run.id, status, error, result, f"s3://results/{run.id}", utcnow())
    return store.get_run(run.id)


def _deliveries(store: Store) -> list[WebhookDelivery]:
    with store.session() as session:
        return list(session.exec(select(WebhookDelivery).order_by(WebhookDelivery.id)).all())


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    made = Store(f"sqlite:///{tmp_path / 'camflow.db'}")
    yield made
    made.close()


def _endpoint(
    store: Store, receiver: Receiver, tenant: str = "acme", events: Any = EVENT_TYPES
) -> str:
    row = Outbox(store).add_endpoint(tenant, receiver.url, events, "", utcnow())
    receiver.secret = row.secret
    return row.id


def _until(condition: Callable[[], bool], worker: DeliveryWorker, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        worker.run_once()
        time.sleep(0.02)


# --- the guard against request forgery ------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("10.0.0.7", "private"),
        ("172.16.3.4", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("100.64.0.1", "not a public address"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "link-local"),
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
    ],
)
def test_non_public_addresses_are_refused(address: str, kind: str) -> None:
    reason = refusal(ipaddress.ip_address(address), Policy())
    assert reason is not None and kind in reason


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal(ipaddress.ip_address(address), Policy()) is None


def test_an_operator_allows_and_blocks_networks() -> None:
    allowed = Policy(allowed=(ipaddress.ip_network("10.20.0.0/16"),))
    assert refusal(ipaddress.ip_address("10.20.1.1"), allowed) is None
    assert refusal(ipaddress.ip_address("10.21.1.1"), allowed) is not None
    blocked = Policy(blocked=(ipaddress.ip_network("203.0.113.0/24"),))
    assert "blocked_networks" in str(refusal(ipaddress.ip_address("203.0.113.9"), blocked))


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:8080/hook", "127.0.0.1 is loopback"),
        ("http://[::1]/hook", "::1 is loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("https://10.1.2.3/hook", "private"),
        ("http://localhost:9000/hook", "localhost resolves to"),
        ("ftp://example.com/hook", "starts with https://"),
        ("https://user:pass@example.com/hook", "no user or password"),
        ("https:///hook", "names no host"),
        ("https://no-such-host.invalid/hook", "does not resolve"),
    ],
)
def test_urls_camflow_will_not_send_to_are_refused_with_the_reason(url: str, problem: str) -> None:
    with pytest.raises(TargetRefused) as refused:
        check(url, Policy())
    assert problem in str(refused.value)


def test_a_name_with_one_forbidden_address_is_refused_whole() -> None:
    def resolver(_host: str, _port: int) -> list[Any]:
        return [ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("10.0.0.1")]

    with pytest.raises(TargetRefused, match=r"hooks\.example\.com resolves to 10\.0\.0\.1"):
        check("https://hooks.example.com/x", Policy(), resolver)


def test_localhost_really_resolves_to_loopback() -> None:
    assert all(a.is_loopback for a in resolve("localhost", 80))
    target = parse("https://Hooks.Example.com:8443/a/b?c=d")
    assert (target.host, target.port, target.path) == ("hooks.example.com", 8443, "/a/b?c=d")


# --- the retry schedule and signatures (pure) ----------------------------------------


def test_backoff_doubles_with_jitter_up_to_its_maximum() -> None:
    schedule = RetrySchedule(base_seconds=5, max_seconds=3600, horizon_seconds=86_400)
    assert [schedule.delay(n, 0.0) for n in (1, 2, 3, 4)] == [2.5, 5, 10, 20]
    assert [schedule.delay(n, 0.999) for n in (1, 2)] == pytest.approx([5, 10], rel=1e-3)
    assert schedule.delay(50, 0.5) == pytest.approx(2700)  # capped: 3600/2 + 3600/4
    # Over a day of failures, at the defaults: about 40 attempts, then it stops.
    start = now = datetime(2026, 3, 1, tzinfo=UTC)
    attempts = 1
    while (later := schedule.next_attempt(attempts, now, start, 0.5)) is not None:
        now, attempts = later, attempts + 1
    assert 35 <= attempts <= 45
    assert now <= start + timedelta(days=1)


def test_an_attempt_makes_a_delivery_delivered_pending_or_failed() -> None:
    schedule = RetrySchedule(base_seconds=10, max_seconds=100, horizon_seconds=60)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    ok = after_attempt(schedule, 0, start, Sent(True, 204), start, 0.5)
    assert (ok["state"], ok["attempts"], ok["delivered_at"]) == (DeliveryState.DELIVERED, 1, start)
    again = after_attempt(schedule, 0, start, Sent(False, 500, "answered 500"), start, 0.0)
    assert again["state"] == DeliveryState.PENDING
    assert again["next_attempt_at"] == start + timedelta(seconds=5)
    late = start + timedelta(seconds=58)
    done = after_attempt(schedule, 3, start, Sent(False, None, "no answer"), late, 0.0)
    assert (done["state"], done["attempts"], done["last_error"]) == (
        DeliveryState.FAILED,
        4,
        "no answer",
    )


def test_signed_headers_verify_with_standardwebhooks() -> None:
    secret = signing.new_secret()
    assert secret.startswith("whsec_")
    body = b'{"type":"run.succeeded"}'
    headers = signing.headers(secret, "msg_1", datetime.now(UTC), body)
    assert Webhook(secret).verify(body, headers) == {"type": "run.succeeded"}
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"succeeded", b"failed"), headers)


def test_the_api_offers_exactly_the_events_there_are() -> None:
    assert set(EventType.__args__) == set(EVENT_TYPES)  # type: ignore[attr-defined]


# --- the outbox: written with the run's end -------------------------------------------


def test_a_run_that_finishes_queues_one_delivery_per_endpoint_that_asked(
    store: Store, receiver: Receiver
) -> None:
    both = _endpoint(store, receiver)
    failures = _endpoint(store, receiver, events=["run.failed"])
    _endpoint(store, receiver, tenant="other")
    _finished_run(store, "acme", 1)
    _finished_run(store, "acme", 2, RunStatus.FAILED)
    _finished_run(store, "nobody", 3)  # a tenant without endpoints: nothing queued
    rows = {(d.endpoint_id, d.event_type, d.run_id) for d in _deliveries(store)}
    assert rows == {
        (both, "run.succeeded", "r-acme000000000001"),
        (both, "run.failed", "r-acme000000000002"),
        (failures, "run.failed", "r-acme000000000002"),
    }
    # A replayed finish (a tick repeated after a crash) queues nothing more.
    assert not store.finish_run("r-acme000000000001", RunStatus.FAILED, "x", None, None, utcnow())
    assert len(_deliveries(store)) == 3


def test_a_delivery_is_signed_and_verified_by_the_receiver(
    store: Store, receiver: Receiver
) -> None:
    _endpoint(store, receiver)
    run = _finished_run(store, "acme", 1)
    worker = DeliveryWorker(store, _settings())
    try:
        report = worker.run_once()
    finally:
        worker.close()
    assert report.delivered == 1
    assert receiver.refused == [] and len(receiver.verified) == 1
    [got] = receiver.got
    assert got.path == "/hooks/camflow?src=test"
    assert got.headers["webhook-id"] == f"msg_{run.id}_{_deliveries(store)[0].endpoint_id}"
    assert got.headers["Content-Type"] == "application/json"
    payload = receiver.verified[0]
    assert payload["type"] == "run.succeeded"
    assert payload["data"]["run_id"] == run.id
    assert payload["data"]["camera"] == "door"
    assert payload["data"]["summary"] == {"frames": 20, "labels": {"face": 3}}
    [row] = _deliveries(store)
    assert (row.state, row.attempts, row.last_status) == (DeliveryState.DELIVERED, 1, 200)
    assert worker.run_once().delivered == 0  # nothing is sent twice


def test_a_failing_receiver_gets_retries_with_the_same_id_and_body(
    store: Store, receiver: Receiver
) -> None:
    _endpoint(store, receiver)
    _finished_run(store, "acme", 1)
    receiver.answers = [500, 503, 200]
    worker = DeliveryWorker(store, _settings())
    try:
        _until(lambda: _deliveries(store)[0].state == DeliveryState.DELIVERED, worker)
    finally:
        worker.close()
    assert len(receiver.got) == 3
    assert len({g.headers["webhook-id"] for g in receiver.got}) == 1
    assert len({g.body for g in receiver.got}) == 1
    assert len(receiver.verified) == 3  # each attempt is signed afresh
    [row] = _deliveries(store)
    assert row.attempts == 3 and row.last_error is None


def test_deliveries_that_fail_for_the_whole_horizon_stop_and_replay(
    store: Store, receiver: Receiver, settings: Settings
) -> None:
    _endpoint(store, receiver)
    _finished_run(store, "acme", 1)
    receiver.answers = [500] * 1000
    worker = DeliveryWorker(store, _settings(retry_horizon_seconds=0.5))
    try:
        _until(lambda: _deliveries(store)[0].state == DeliveryState.FAILED, worker)
        tries = len(receiver.got)
        assert tries >= 2
        time.sleep(0.3)
        worker.run_once()
        assert len(receiver.got) == tries  # given up: no more attempts
        [failed] = Outbox(store).deliveries(state=DeliveryState.FAILED)
        assert "answered 500: no" in str(failed.last_error)

        receiver.answers = []
        assert Outbox(store).replay(failed.id, utcnow()) is not None
        _until(lambda: _deliveries(store)[0].state == DeliveryState.DELIVERED, worker)
    finally:
        worker.close()
    assert {g.headers["webhook-id"] for g in receiver.got} == {failed.id}
    assert _deliveries(store)[0].attempts == 1  # counted afresh from the replay


def test_a_redirect_is_not_followed(store: Store, receiver: Receiver) -> None:
    _endpoint(store, receiver)
    _finished_run(store, "acme", 1)
    receiver.answers = [302]
    worker = DeliveryWorker(store, _settings(retry_base_seconds=60))
    try:
        assert worker.run_once().retrying == 1
    finally:
        worker.close()
    assert [g.path for g in receiver.got] == ["/hooks/camflow?src=test"]  # not /elsewhere
    [row] = _deliveries(store)
    assert row.last_status == 302
    assert "redirect to /elsewhere: redirects are not followed" in str(row.last_error)


def test_an_answer_that_trickles_in_does_not_hold_the_sender() -> None:
    """A refusal whose body comes a byte at a time, each well within the timeout: its
    reading stops at the timeout, not at the end of the body."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n")
        while not stop.is_set():
            try:
                conn.sendall(b"1\r\nx\r\n")
            except OSError:
                break
            time.sleep(0.2)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    from orchestrator.webhooks.delivery import Sender, policy_of

    sender = Sender(policy_of(_settings()), timeout_seconds=1)
    started = time.monotonic()
    try:
        port = listener.getsockname()[1]
        sent = sender.send(f"http://127.0.0.1:{port}/", {}, b"{}")
    finally:
        stop.set()
        sender.close()
        listener.close()
    assert time.monotonic() - started < 5
    assert (sent.accepted, sent.status) == (False, 500)
    assert str(sent.error).startswith("answered 500: xxx")


def test_the_guard_holds_at_send_time_too(store: Store, receiver: Receiver) -> None:
    """An endpoint that was allowed (or whose name now resolves elsewhere) is checked
    again at each send: without the operator's allowance nothing goes to loopback."""
    _endpoint(store, receiver)
    _finished_run(store, "acme", 1)
    worker = DeliveryWorker(store, _settings(allowed_networks=[], retry_base_seconds=60))
    try:
        assert worker.run_once().retrying == 1
    finally:
        worker.close()
    assert receiver.got == []
    assert "127.0.0.1 is loopback" in str(_deliveries(store)[0].last_error)


def test_a_name_is_connected_to_at_the_address_that_was_checked(
    store: Store, receiver: Receiver
) -> None:
    """The name is resolved once: the connection goes to the checked address, and the
    receiver still sees the name in Host (no second lookup to rebind)."""
    assert receiver.server is not None
    port = receiver.server.server_address[1]
    row = Outbox(store).add_endpoint(
        "acme", f"http://hooks.example.com:{port}/in", EVENT_TYPES, "", utcnow()
    )
    receiver.secret = row.secret
    _finished_run(store, "acme", 1)
    lookups: list[str] = []

    def resolver(host: str, _port: int) -> list[Any]:
        lookups.append(host)
        return [ipaddress.ip_address("127.0.0.1")]

    from orchestrator.webhooks.delivery import Sender, policy_of

    sender = Sender(policy_of(_settings()), 2, resolver=resolver)
    worker = DeliveryWorker(store, _settings(), sender=sender)
    try:
        assert worker.run_once().delivered == 1
    finally:
        worker.close()
    assert lookups == ["hooks.example.com"]
    assert receiver.got[0].headers["Host"] == f"hooks.example.com:{port}"


def test_deliveries_survive_a_restart(tmp_path: Path, receiver: Receiver) -> None:
    url = f"sqlite:///{tmp_path / 'camflow.db'}"
    first = Store(url)
    _endpoint(first, receiver)
    _finished_run(first, "acme", 1)
    _finished_run(first, "acme", 2)
    # A replica took both and died before sending: its claim holds them for the lease.
    token, claimed = Outbox(first).claim(utcnow(), utcnow() + timedelta(seconds=30), 10)
    assert len(claimed) == 2
    first.close()

    second = Store(url)
    worker = DeliveryWorker(second, _settings())
    try:
        assert worker.run_once().delivered == 0  # still claimed: not sent twice at once
        # Once the lease has passed, the new replica sends them.
        later = DeliveryWorker(
            second, _settings(), clock=lambda: datetime.now(UTC) + timedelta(seconds=31)
        )
        try:
            assert later.run_once().delivered == 2
        finally:
            later.close()
    finally:
        worker.close()
        second.close()
    assert len(receiver.verified) == 2
    # The dead replica's late outcome is not recorded over the new one's.
    assert not Outbox(Store(url)).record(claimed[0].delivery.id, token, attempts=99)


def test_two_workers_never_claim_the_same_delivery(store_url: str) -> None:
    """Claims on SQLite and PostgreSQL: many due deliveries, claimed from threads at
    once, each goes to exactly one claim."""
    store = Store(store_url)
    try:
        outbox = Outbox(store)
        outbox.add_endpoint("acme", "https://hooks.example.com/a", EVENT_TYPES, "", utcnow())
        outbox.add_endpoint("acme", "https://hooks.example.com/b", EVENT_TYPES, "", utcnow())
        for n in range(20):
            _finished_run(store, "acme", n)
        now = utcnow() + timedelta(seconds=1)

        def claim(_: int) -> list[str]:
            """What one worker takes, claiming until nothing is left."""
            mine: list[str] = []
            while True:
                _token, got = outbox.claim(now, now + timedelta(seconds=60), 3)
                if not got:
                    return mine
                mine += [c.delivery.id for c in got]

        with ThreadPoolExecutor(6) as pool:
            taken = [i for ids in pool.map(claim, range(6)) for i in ids]
        assert len(taken) == len(set(taken)) == 40
    finally:
        store.close()


# --- the API ----------------------------------------------------------------------------


@pytest.fixture
def api(settings: Settings) -> Iterator[dict[str, Any]]:
    """The API with keys of two tenants' customers, an author and an admin; its
    ``client(allowed)`` is the app under an operator who allows those networks."""
    with open_runtime(settings) as runtime:
        keys = {}
        for name, tenant, role in [
            ("a", "tenant-a", Role.CUSTOMER),
            ("b", "tenant-b", Role.CUSTOMER),
            ("author", "tenant-a", Role.AUTHOR),
            ("admin", "ops", Role.ADMIN),
        ]:
            _, text = create_key(runtime.store, tenant, role)
            keys[name] = {"Authorization": f"Bearer {text}"}

        def client(allowed: list[str]) -> TestClient:
            runtime.settings.webhooks.allowed_networks = [ipaddress.ip_network(n) for n in allowed]
            return TestClient(create_app(runtime))

        yield {"runtime": runtime, "client": client, "keys": keys}


#: A public address: registering it needs no allowance and no DNS.
PUBLIC_URL = "https://93.184.215.14/in"


def test_customers_register_list_and_remove_their_endpoints(api: dict[str, Any]) -> None:
    client, keys = api["client"]([]), api["keys"]
    made = client.post(
        "/v1/webhook-endpoints",
        json={"url": PUBLIC_URL, "events": ["run.failed"], "description": "ops"},
        headers=keys["a"],
    )
    assert made.status_code == 201, made.text
    created = made.json()
    assert created["secret"].startswith("whsec_") and created["tenant"] == "tenant-a"
    assert (created["events"], created["url"]) == (["run.failed"], PUBLIC_URL)

    listed = client.get("/v1/webhook-endpoints", headers=keys["a"]).json()
    assert [e["endpoint_id"] for e in listed] == [created["endpoint_id"]]
    assert "secret" not in listed[0]  # shown once, at creation
    assert created["secret"] not in client.get("/v1/webhook-endpoints", headers=keys["a"]).text
    assert client.get("/v1/webhook-endpoints", headers=keys["b"]).json() == []
    admin_view = client.get("/v1/webhook-endpoints", headers=keys["admin"]).json()
    assert [e["tenant"] for e in admin_view] == ["tenant-a"]

    path = f"/v1/webhook-endpoints/{created['endpoint_id']}"
    gone = client.delete(path, headers=keys["b"])  # another tenant's: as if absent
    assert gone.status_code == 404
    assert gone.headers["content-type"] == "application/problem+json"
    assert client.delete(path, headers=keys["a"]).status_code == 204
    assert client.get("/v1/webhook-endpoints", headers=keys["a"]).json() == []


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:8080/x", "127.0.0.1 is loopback"),
        ("http://[::1]:8080/x", "::1 is loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.0.0.5/x", "private"),
        ("http://localhost:8080/x", "localhost resolves to"),
    ],
)
def test_the_api_refuses_endpoints_on_internal_addresses(
    api: dict[str, Any], url: str, problem: str
) -> None:
    client = api["client"]([])
    answer = client.post("/v1/webhook-endpoints", json={"url": url}, headers=api["keys"]["a"])
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert problem in answer.json()["detail"]
    assert "webhooks.allowed_networks" in answer.json()["detail"]
    # What the operator allows, a tenant may use.
    allowed = api["client"]([*LOOPBACK, "169.254.0.0/16", "10.0.0.0/8"])
    answer = allowed.post("/v1/webhook-endpoints", json={"url": url}, headers=api["keys"]["a"])
    assert answer.status_code == 201, answer.text


def test_only_customers_and_admins_manage_webhooks(api: dict[str, Any]) -> None:
    client, keys = api["client"]([]), api["keys"]
    assert client.get("/v1/webhook-endpoints", headers=keys["author"]).status_code == 403
    assert client.get("/v1/webhook-deliveries").status_code == 401
    # A customer cannot register for another tenant; an admin can.
    body = {"url": PUBLIC_URL, "tenant": "tenant-b"}
    assert client.post("/v1/webhook-endpoints", json=body, headers=keys["a"]).status_code == 403
    made = client.post("/v1/webhook-endpoints", json=body, headers=keys["admin"])
    assert made.status_code == 201 and made.json()["tenant"] == "tenant-b"
    assert client.get("/v1/webhook-endpoints", headers=keys["a"]).json() == []


def test_deliveries_are_listed_and_replayed_per_tenant(
    api: dict[str, Any], receiver: Receiver
) -> None:
    client, keys, runtime = api["client"](LOOPBACK), api["keys"], api["runtime"]
    made = client.post("/v1/webhook-endpoints", json={"url": receiver.url}, headers=keys["a"])
    assert made.status_code == 201, made.text
    receiver.secret = made.json()["secret"]
    _finished_run(runtime.store, "tenant-a", 1)
    _finished_run(runtime.store, "tenant-a", 2, RunStatus.FAILED)

    page = client.get("/v1/webhook-deliveries", params={"limit": 1}, headers=keys["a"]).json()
    assert len(page["items"]) == 1 and page["next"]
    rest = client.get(
        "/v1/webhook-deliveries", params={"cursor": page["next"]}, headers=keys["a"]
    ).json()
    assert len(rest["items"]) == 1 and rest["next"] is None
    ids = {page["items"][0]["delivery_id"], rest["items"][0]["delivery_id"]}
    assert client.get("/v1/webhook-deliveries", headers=keys["b"]).json()["items"] == []

    metrics = client.get("/metrics").text
    assert "camflow_webhook_deliveries_pending 2.0" in metrics

    worker = DeliveryWorker(runtime.store, _settings())
    try:
        assert worker.run_once().delivered == 2
        one = sorted(ids)[0]
        replay = f"/v1/webhook-deliveries/{one}/replay"
        assert client.post(replay, headers=keys["b"]).status_code == 404  # not b's
        again = client.post(replay, headers=keys["a"])
        assert again.status_code == 202 and again.json()["state"] == "pending"
        assert worker.run_once().delivered == 1
    finally:
        worker.close()
    assert [g.headers["webhook-id"] for g in receiver.got].count(one) == 2
    delivered = client.get(
        "/v1/webhook-deliveries", params={"state": "delivered"}, headers=keys["a"]
    ).json()["items"]
    assert {d["delivery_id"] for d in delivered} == ids
    assert 'camflow_webhook_attempts_total{outcome="delivered"}' in client.get("/metrics").text


def test_serve_delivers_from_its_own_job(settings: Settings, receiver: Receiver) -> None:
    settings = settings.model_copy(update={"webhooks": _settings(interval_seconds=0.1)})
    with open_runtime(settings) as runtime:
        _endpoint(runtime.store, receiver)
        service = Service(runtime)
        service.start()
        try:
            _finished_run(runtime.store, "acme", 1)
            deadline = time.monotonic() + 10
            while not receiver.verified and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            service.stop()
    assert [v["type"] for v in receiver.verified] == ["run.succeeded"]


@pytest.mark.slow
def test_real_clips_through_the_engine_reach_the_receiver(
    settings: Settings, clips: SampleClips, receiver: Receiver
) -> None:
    """Real H.264 clips uploaded, found and run by the engine (the faces pipeline):
    the run that succeeds and the one that fails each reach the receiver, verified."""
    settings = settings.model_copy(update={"webhooks": _settings()})
    with open_runtime(settings) as runtime:
        _endpoint(runtime.store, receiver)
        at = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
        for n, path in enumerate([clips.face, clips.corrupt]):
            key = upload_key("acme", "door", at + timedelta(seconds=n))
            runtime.s3.upload_file(path, settings.s3.ingest_bucket, key)
        runtime.watcher.tick()
        runtime.reconciler.plan_new_clips()
        runs = [run.id for run, _ in runtime.store.list_runs()]
        assert len(runs) == 2
        drive(runtime, runs, timeout=300, interval=0.2)
        worker = DeliveryWorker(runtime.store, settings.webhooks)
        try:
            assert worker.run_once().delivered == 2
        finally:
            worker.close()
    assert receiver.refused == []
    by_type = {v["type"]: v["data"] for v in receiver.verified}
    assert sorted(by_type) == ["run.failed", "run.succeeded"]
    assert by_type["run.succeeded"]["summary"]["labels"]["face"] > 0
    assert "not a readable video" in by_type["run.failed"]["error"]


# --- the CLI ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["", "add", "list", "remove", "deliveries", "replay"])
def test_every_webhooks_command_has_help(command: str) -> None:
    result = CliRunner().invoke(cli, ["webhooks", *command.split(), "--help"])
    assert result.exit_code == 0 and "Usage" in result.output, result.output


def test_the_cli_adds_lists_replays_and_removes(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAMFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("CAMFLOW_WEBHOOKS__ALLOWED_NETWORKS", json.dumps(LOOPBACK))
    runner = CliRunner()
    refused = runner.invoke(cli, ["webhooks", "add", "http://10.0.0.1/x", "--tenant", "acme"])
    assert refused.exit_code == 1 and "private" in refused.output
    added = runner.invoke(
        cli,
        ["webhooks", "add", receiver.url, "--tenant", "acme", "--event", "run.failed", "--json"],
    )
    assert added.exit_code == 0, added.output
    endpoint = json.loads(added.stdout)
    assert endpoint["secret"].startswith("whsec_")
    listed = json.loads(runner.invoke(cli, ["webhooks", "list", "--json"]).stdout)
    assert [e["id"] for e in listed] == [endpoint["id"]] and "secret" not in listed[0]

    store = Store(f"sqlite:///{tmp_path / 'camflow.db'}")
    try:
        _finished_run(store, "acme", 1, RunStatus.FAILED)
    finally:
        store.close()
    shown = runner.invoke(cli, ["webhooks", "deliveries", "--state", "pending", "--json"])
    [delivery] = json.loads(shown.stdout)
    assert (delivery["event_type"], delivery["attempts"]) == ("run.failed", 0)
    assert runner.invoke(cli, ["webhooks", "replay", delivery["id"]]).exit_code == 0
    assert runner.invoke(cli, ["webhooks", "replay", "msg_nope"]).exit_code == 1
    assert runner.invoke(cli, ["webhooks", "remove", endpoint["id"]]).exit_code == 0
    assert json.loads(runner.invoke(cli, ["webhooks", "deliveries", "--json"]).stdout) == []


def test_no_secret_is_logged(
    store: Store, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    _endpoint(store, receiver)
    _finished_run(store, "acme", 1)
    receiver.answers = [500]
    caplog.set_level("DEBUG")
    worker = DeliveryWorker(store, _settings())
    try:
        _until(lambda: len(receiver.got) == 2, worker)
    finally:
        worker.close()
    assert receiver.secret not in caplog.text
    assert receiver.secret.removeprefix("whsec_") not in caplog.text
    assert "answered 500" in caplog.text


def test_a_replay_while_a_send_is_under_way_waits_for_it(store: Store, receiver: Receiver) -> None:
    """Clearing a live claim would let a second replica send the same delivery while
    the first still is: the replay waits for the claim to end instead."""
    _endpoint(store, receiver)
    _finished_run(store, "acme", 1)
    outbox, now = Outbox(store), utcnow()
    token, [claimed] = outbox.claim(now, now + timedelta(seconds=60), limit=10)
    assert outbox.replay(claimed.delivery.id, now) is not None
    assert outbox.claim(now, now + timedelta(seconds=60), limit=10)[1] == []  # not at once
    later = now + timedelta(seconds=61)
    assert [c.delivery.id for c in outbox.claim(later, later + timedelta(seconds=60), 10)[1]] == [
        claimed.delivery.id
    ]
    assert token


def test_the_cli_prints_what_tenants_wrote_as_text_not_markup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A description a tenant set over the API, or an error quoting a receiver's answer,
    holds `[/]` or `[link=…]`: listing them must neither fail nor style anything."""
    monkeypatch.setenv("CAMFLOW_HOME", str(tmp_path))
    store = Store(f"sqlite:///{tmp_path / 'camflow.db'}")
    try:
        outbox = Outbox(store)
        outbox.add_endpoint(
            "acme",
            "https://hooks.example.com/x",
            ["run.failed"],
            "[/] [link=https://evil.example]click[/link]",
            utcnow(),
        )
    finally:
        store.close()
    listed = CliRunner().invoke(cli, ["webhooks", "list"], env={"COLUMNS": "300"})
    assert listed.exit_code == 0, listed.output
    assert "[/] [link=https://evil.example]click[/link]" in listed.output


def test_delivered_deliveries_are_pruned_after_the_settings_keep_them(
    store: Store, receiver: Receiver
) -> None:
    """The outbox does not grow with the history: delivered ones older than
    keep_delivered_days go; recent ones, and failed ones (to replay), stay."""
    from sqlmodel import update

    _endpoint(store, receiver)
    for n in (1, 2, 3):
        _finished_run(store, "acme", n)
    old, recent, failed = (d.id for d in _deliveries(store))
    now = utcnow()
    with store.session() as session:
        for delivery_id, state, at in (
            (old, DeliveryState.DELIVERED, now - timedelta(days=8)),
            (recent, DeliveryState.DELIVERED, now - timedelta(days=1)),
            (failed, DeliveryState.FAILED, None),
        ):
            session.exec(
                update(WebhookDelivery)  # type: ignore[call-overload]
                .where(WebhookDelivery.id == delivery_id)
                .values(state=state, delivered_at=at, created_at=now - timedelta(days=9))
            )
        session.commit()
    worker = DeliveryWorker(store, _settings(keep_delivered_days=7))
    try:
        worker.run_once()
    finally:
        worker.close()
    assert {d.id for d in _deliveries(store)} == {recent, failed}
