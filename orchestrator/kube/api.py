"""The official Kubernetes client, behind one retry helper. The only module that
imports ``kubernetes``."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from orchestrator.errors import ExecutorError
from orchestrator.settings import ClusterSettings

log = logging.getLogger("camflow.kube")
T = TypeVar("T")


#: Items per page of a list: each tick's lists stay bounded however many Jobs exist.
PAGE = 500


class KubeApiError(ExecutorError):
    """The API server refused a request (a 4xx other than 409 on create): something
    about the request, not the cluster. ``api_message`` is the server's own words."""

    def __init__(
        self, message: str, status: int | None = None, api_message: str = "", reason: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.api_message = api_message
        #: The Status object's reason: Forbidden, Invalid, NotFound, Expired, ...
        self.reason = reason


class ClusterUnreachable(ExecutorError):
    """The API server did not answer usefully after the retries."""


def retry_delay(headers: Any, attempt: int, base: float = 0.5, cap: float = 10.0) -> float:
    """Retry-After when the server sent one (seconds), else exponential backoff."""
    value = (headers or {}).get("Retry-After") if headers is not None else None
    if value is not None:
        try:
            return min(cap, max(0.0, float(value)))
        except ValueError:
            pass
    return min(cap, base * 2 ** (attempt - 1))


class ClusterApi:
    def __init__(
        self,
        cluster: ClusterSettings,
        attempts: int = 5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        from kubernetes import client, config

        configuration = client.Configuration()
        if cluster.in_cluster:
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(
                config_file=str(cluster.kubeconfig) if cluster.kubeconfig else None,
                context=cluster.context,
                client_configuration=configuration,
            )
        configuration.retries = False  # ours below, which know 409 and Retry-After
        self.cluster = cluster
        self.attempts = attempts
        self.sleep = sleep
        self.timeout = (3.0, cluster.request_timeout_seconds)
        self._client = client.ApiClient(configuration)
        self.batch = client.BatchV1Api(self._client)
        self.core = client.CoreV1Api(self._client)
        self.version = client.VersionApi(self._client)

    def call(
        self, what: str, fn: Callable[[], T], creating: bool = False, attempts: int | None = None
    ) -> T | None:
        """Calls ``fn`` with retries on 5xx, 429 and connection errors, honouring
        Retry-After. A 409 while creating means the object exists (an earlier try, or
        an earlier life of camflow, made it): returns None."""
        import urllib3
        from kubernetes.client.exceptions import ApiException

        last: Exception | None = None
        attempts = attempts or self.attempts
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except ApiException as exc:
                if exc.status == 409 and creating:
                    return None
                if exc.status and (exc.status == 429 or exc.status >= 500):
                    last, delay = exc, retry_delay(exc.headers, attempt)
                else:
                    message, reason = _message(exc.body)
                    raise KubeApiError(
                        f"cluster {self.cluster.name}: {what} refused: {exc.status} "
                        f"{exc.reason}: {message}",
                        exc.status,
                        message,
                        reason,
                    ) from exc
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                last, delay = exc, retry_delay(None, attempt)
            if attempt < attempts:
                log.debug(
                    "cluster %s: %s failed (%s); retrying in %.1f s",
                    self.cluster.name,
                    what,
                    last,
                    delay,
                )
                self.sleep(delay)
        raise ClusterUnreachable(
            f"cluster {self.cluster.name}: {what} failed {attempts} times: {last}"
        ) from last

    def _json(self, response: Any) -> dict[str, Any]:
        return json.loads(response.data)

    def create_job(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The Job as the server made it now (its uid included), or None if it existed
        already."""
        created = self.call(
            f"create job {body['metadata']['name']}",
            lambda: self.batch.create_namespaced_job(
                self.cluster.namespace, body, _request_timeout=self.timeout, _preload_content=False
            ),
            creating=True,
        )
        return None if created is None else self._json(created)

    def _list(
        self, what: str, fn: Callable[..., Any], attempts: int | None = None, **kwargs: Any
    ) -> list[dict[str, Any]]:
        """Every item, a page at a time (limit/continue). A continue token that expired
        (410) restarts the list from the top, as client-go's pager does."""
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = {**kwargs, "limit": PAGE} | ({"_continue": token} if token else {})

            def fetch(page: dict[str, Any] = page) -> dict[str, Any]:
                return self._json(
                    fn(
                        self.cluster.namespace,
                        _request_timeout=self.timeout,
                        _preload_content=False,
                        **page,
                    )
                )

            try:
                listing = self.call(what, fetch, attempts=attempts)
            except KubeApiError as exc:
                if exc.status == 410 and token:
                    items, token = [], None
                    continue
                raise
            items += (listing or {}).get("items") or []
            token = ((listing or {}).get("metadata") or {}).get("continue") or None
            if not token:
                return items

    def list_jobs(self, selector: str, attempts: int | None = None) -> list[dict[str, Any]]:
        return self._list(
            "list jobs", self.batch.list_namespaced_job, attempts, label_selector=selector
        )

    def list_pods(self, selector: str, attempts: int | None = None) -> list[dict[str, Any]]:
        return self._list(
            "list pods", self.core.list_namespaced_pod, attempts, label_selector=selector
        )

    def get_job(self, name: str, attempts: int | None = None) -> dict[str, Any] | None:
        """The Job, or None when it does not exist (404)."""
        try:
            return self.call(
                f"get job {name}",
                lambda: self._json(
                    self.batch.read_namespaced_job(
                        name,
                        self.cluster.namespace,
                        _request_timeout=self.timeout,
                        _preload_content=False,
                    )
                ),
                attempts=attempts,
            )
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    def create_secret(self, body: dict[str, Any]) -> bool:
        """True if created now, False if it existed already (an earlier try made it)."""
        created = self.call(
            f"create secret {body['metadata']['name']}",
            lambda: self.core.create_namespaced_secret(
                self.cluster.namespace, body, _request_timeout=self.timeout, _preload_content=False
            ),
            creating=True,
        )
        return created is not None

    def probe(self) -> None:
        """One quick question (the server's version): does the cluster answer at all?"""
        self.call(
            "probe",
            lambda: self.version.get_code(_request_timeout=self.timeout, _preload_content=False),
            attempts=1,
        )

    def delete_job(self, name: str, attempts: int | None = None) -> None:
        try:
            self.call(
                f"delete job {name}",
                lambda: self.batch.delete_namespaced_job(
                    name,
                    self.cluster.namespace,
                    propagation_policy="Background",
                    _request_timeout=self.timeout,
                    _preload_content=False,
                ),
                attempts=attempts,
            )
        except KubeApiError as exc:
            if exc.status != 404:
                raise

    def nodes(self) -> list[dict[str, Any]]:
        listing = self.call(
            "list nodes",
            lambda: self._json(
                self.core.list_node(_request_timeout=self.timeout, _preload_content=False)
            ),
        )
        return (listing or {}).get("items") or []


def _message(body: Any) -> tuple[str, str]:
    """The Status object's message and reason, or the body's start."""
    try:
        status = json.loads(body)
        return str(status.get("message")), str(status.get("reason") or "")
    except (TypeError, ValueError, AttributeError):
        return str(body)[:200], ""
