"""The delivery worker: an APScheduler job on every `camflow serve` replica that claims
the deliveries that are due, sends them (a bounded number at once) and records each
outcome. It runs beside the engine, never inside its tick: the engine only writes the
outbox row, in the transaction that finishes a run.

Each send resolves the endpoint's name once, checks every address (targets.py) and
connects to a checked one, keeping the name for ``Host`` and TLS (SNI and certificate
checks), so the address connected to is the one that was checked. Redirects are not
followed and proxies from the environment are not used.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial

import httpx
from prometheus_client import Counter

from orchestrator.settings import WebhookSettings
from orchestrator.store import Store
from orchestrator.store.webhooks import DeliveryState
from orchestrator.webhooks import signing
from orchestrator.webhooks.events import run_body
from orchestrator.webhooks.outbox import Claimed, Outbox
from orchestrator.webhooks.schedule import RetrySchedule, Sent, after_attempt
from orchestrator.webhooks.targets import Policy, Resolver, TargetRefused, check, resolve

log = logging.getLogger("camflow.webhooks")
#: How often a worker prunes delivered deliveries (each prune is a bounded delete).
PRUNE_EVERY = timedelta(minutes=10)

ATTEMPTS = Counter(
    "camflow_webhook_attempts_total",
    "Webhook delivery attempts this process made, by outcome (delivered; retrying: "
    "refused or unanswered, tried again later; failed: retried until the horizon, now "
    "listed for replay).",
    ["outcome"],
)
#: Of an answer's body, what is kept as the attempt's error (the rest is not read).
ANSWER_BYTES = 512
USER_AGENT = "camflow-webhooks/0.1"


def policy_of(settings: WebhookSettings) -> Policy:
    return Policy(tuple(settings.allowed_networks), tuple(settings.blocked_networks))


@dataclass
class DeliveryReport:
    delivered: int = 0
    retrying: int = 0
    failed: int = 0


class Sender:
    """POSTs one signed body to one endpoint; never raises for what the endpoint or
    the network did (that is the attempt's outcome)."""

    def __init__(
        self,
        policy: Policy,
        timeout_seconds: float,
        resolver: Resolver = resolve,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.policy, self.resolver = policy, resolver
        self.timeout = timeout_seconds
        self.client = httpx.Client(
            follow_redirects=False,
            timeout=timeout_seconds,
            trust_env=False,  # no proxy from the environment: we connect to what we checked
            # A connection is made for one checked address and one name: none is kept
            # for another name that resolves to the same address.
            limits=httpx.Limits(max_keepalive_connections=0),
            transport=transport,
        )

    def close(self) -> None:
        self.client.close()

    def send(self, url: str, headers: dict[str, str], body: bytes) -> Sent:
        try:
            target, address = check(url, self.policy, self.resolver)
        except TargetRefused as exc:
            return Sent(False, None, f"not sent: {exc}")
        host = f"[{address}]" if isinstance(address, ipaddress.IPv6Address) else str(address)
        default_port = 443 if target.scheme == "https" else 80
        named = target.host if ":" not in target.host else f"[{target.host}]"
        host_header = named if target.port == default_port else f"{named}:{target.port}"
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        try:
            with self.client.stream(
                "POST",
                f"{target.scheme}://{host}:{target.port}{target.path}",
                content=body,
                headers={
                    **headers,
                    "Host": host_header,
                    "Content-Type": "application/json",
                    "User-Agent": USER_AGENT,
                },
                extensions=extensions,
            ) as response:
                # A 2xx's body is never read; another's first bytes say why it refused.
                ok = 200 <= response.status_code < 300
                answer = "" if ok else _start_of(response, time.monotonic() + self.timeout)
        except httpx.TimeoutException:
            return Sent(False, None, f"no answer within {self.timeout:g} s")
        except httpx.HTTPError as exc:
            return Sent(False, None, f"could not reach it: {type(exc).__name__}: {exc}")
        status = response.status_code
        if 200 <= status < 300:
            return Sent(True, status)
        if 300 <= status < 400:
            where = response.headers.get("location", "nowhere")
            return Sent(
                False,
                status,
                f"answered {status}, a redirect to {where[:300]}: redirects are not "
                "followed; register the URL that answers 2xx itself",
            )
        return Sent(
            False, status, f"answered {status}: {answer}" if answer else f"answered {status}"
        )


def _start_of(response: httpx.Response, deadline: float) -> str:
    """The first bytes of an answer's body, as text, read until ``deadline`` at most (a
    body that trickles in would hold the sender otherwise); the rest is never read."""
    kept = b""
    for chunk in response.iter_bytes():
        kept += chunk
        if len(kept) >= ANSWER_BYTES or time.monotonic() > deadline:
            break
    return kept[:ANSWER_BYTES].decode("utf-8", "replace").strip()


class DeliveryWorker:
    """Sends the deliveries that are due, ``concurrency`` at a time, until none is."""

    def __init__(
        self,
        store: Store,
        settings: WebhookSettings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        draw: Callable[[], float] = random.random,
        sender: Sender | None = None,
    ) -> None:
        self.outbox = Outbox(store)
        self.settings, self.clock, self.draw = settings, clock, draw
        self.schedule = RetrySchedule(
            settings.retry_base_seconds, settings.retry_max_seconds, settings.retry_horizon_seconds
        )
        self.sender = sender or Sender(policy_of(settings), settings.timeout_seconds)
        self._pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="camflow-webhook")
        self._stopping = threading.Event()
        # A claim outlives a round's sends: connect, write and read each have the
        # timeout, and the store's writes come after.
        self.lease = timedelta(seconds=4 * settings.timeout_seconds + 30)
        #: When the worker last pruned delivered deliveries (None: not yet).
        self._pruned_at: datetime | None = None

    def run_once(self) -> DeliveryReport:
        """Rounds of claim, send, record, until nothing that was due when it began is
        left (a delivery retried meanwhile waits for the next run), or the worker stops."""
        report = DeliveryReport()
        began = self.clock()
        while not self._stopping.is_set():
            until = self.clock() + self.lease
            token, claimed = self.outbox.claim(began, until, self.settings.concurrency)
            if not claimed:
                break
            for outcome in self._pool.map(partial(self._deliver, token=token), claimed):
                setattr(report, outcome, getattr(report, outcome) + 1)
        self._prune()
        return report

    def _prune(self) -> None:
        """Every few minutes, a bounded delete of what was delivered longer ago than the
        settings keep: the outbox does not grow with the history."""
        now = self.clock()
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = now
        gone = self.outbox.prune(now - timedelta(days=self.settings.keep_delivered_days))
        if gone:
            log.info(
                "pruned %d webhook deliveries delivered over %g days ago",
                gone,
                self.settings.keep_delivered_days,
            )

    def _deliver(self, claimed: Claimed, token: str) -> str:
        delivery, endpoint = claimed.delivery, claimed.endpoint
        body = run_body(delivery.event_type, claimed.run, claimed.clip)
        headers = signing.headers(endpoint.secret, delivery.id, self.clock(), body)
        sent = self.sender.send(endpoint.url, headers, body)
        values = after_attempt(
            self.schedule,
            delivery.attempts,
            delivery.window_started_at,
            sent,
            self.clock(),
            self.draw(),
        )
        if not self.outbox.record(delivery.id, token, **values):
            log.info("webhook %s: replayed while it was being sent; sent again", delivery.id)
            return "retrying"
        state = values["state"]
        where = f"webhook {delivery.id} ({delivery.event_type}) to endpoint {endpoint.id}"
        if state == DeliveryState.DELIVERED:
            outcome = "delivered"
            log.info("%s delivered (attempt %d)", where, values["attempts"])
        elif state == DeliveryState.FAILED:
            outcome = "failed"
            log.warning(
                "%s failed for good after %d attempts: %s; listed for replay",
                where,
                values["attempts"],
                sent.error,
            )
        else:
            outcome = "retrying"
            log.info(
                "%s attempt %d: %s; next at %s",
                where,
                values["attempts"],
                sent.error,
                values["next_attempt_at"].isoformat(),
            )
        ATTEMPTS.labels(outcome).inc()
        return outcome

    def stop(self) -> None:
        """No new round starts; the one under way finishes."""
        self._stopping.set()

    def close(self) -> None:
        self._stopping.set()
        self._pool.shutdown(wait=True)
        self.sender.close()
