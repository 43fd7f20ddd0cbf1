"""A Kubernetes API server emulator over real HTTP, and the controllers behind it.

No kube-apiserver can run on these machines; this is the stand-in, and it must behave
as upstream does wherever the executor relies on it. Each behaviour, and the upstream
source it follows:

Each behaviour -> where upstream does it:

- 404/409 as Status objects, 403 Forbidden, 422 Invalid -> k8s.io/apiserver handlers
- label selectors (=, ==, !=, exists, !, in, notin) -> apimachinery pkg/labels/selector.go
- lists paginated by limit/continue, in key order -> the apiserver's etcd3 store
- a Job's name a DNS-1123 label of <= 63, an image required
  -> pkg/apis/batch/validation/validation.go (and core validation)
- ``count/jobs.batch`` quota, 403 "exceeded quota: ..." -> plugin/pkg/admission/resourcequota
- RBAC rule matching (verbs, apiGroups, resources with subresources, resourceNames,
  nonResourceURLs) -> pkg/apis/rbac/v1/evaluation_helpers.go
- deleting a batch/v1 Job orphans its pods unless a propagationPolicy says otherwise
  -> pkg/registry/batch/job/strategy.go (DefaultGarbageCollectionPolicy)
- ``startTime`` and ``active`` at the Job's first sync, before any pod has a node
  -> pkg/controller/job/job_controller.go (syncJob)
- pod-failure backoff 10 s, doubling, capped at 6 min -> the Job docs (backoff policy)
- podFailurePolicy FailJob on exit codes, Ignore on DisruptionTarget
  -> pkg/controller/job/pod_failure_policy.go
- ``FailureTarget`` then ``Failed``, ``SuccessCriteriaMet`` then ``Complete``: the
  terminal condition only once every pod stopped (1.31+) -> job_controller.go
- Job-level activeDeadlineSeconds -> ``DeadlineExceeded`` -> job_controller.go
- scheduling by nodeSelector, tolerations matched in full (key, operator, value,
  effect), GPUs per node -> pkg/scheduler plugins NodeAffinity, TaintToleration,
  NodeResourcesFit; core/v1 toleration matching
- unschedulable: ``PodScheduled=False`` reason ``Unschedulable``
  -> pkg/scheduler/schedule_one.go
- an image that cannot be pulled: waiting ``ErrImagePull`` then ``ImagePullBackOff``;
  a missing Secret: ``CreateContainerConfigError`` -> the kubelet
  (pkg/kubelet/images, pkg/kubelet/kuberuntime/kuberuntime_container.go)
- the pod's activeDeadlineSeconds, counted from the kubelet taking the pod: phase
  Failed, reason ``DeadlineExceeded`` -> the kubelet (kubelet_pods.go)
- out of memory: terminated reason ``OOMKilled``, exit code 137 -> kubelet and runtime
- eviction: reason ``Evicted`` with a ``DisruptionTarget`` condition
  -> the kubelet's eviction manager
- the termination message: the file the kubelet mounts at the container's
  terminationMessagePath (default /dev/termination-log), its last 4096 bytes
  (getTerminationMessage: tail.ReadAtMost, MaxContainerTerminationMessageLength), then
  at most 12 KiB split evenly over the pod's containers (status_manager.go,
  normalizeStatus: MaxPodTerminationMessageLogLength); with FallbackToLogsOnError, the
  log's tail (stdout and stderr together, 80 lines, 2048 bytes) when the container
  failed and left the file empty -> kuberuntime_container.go. There are no mounts
  here: a container variable whose value is that path names the file instead
- the TTL controller deletes a finished Job ttlSecondsAfterFinished after, its pods
  first (Foreground) -> pkg/controller/ttlafterfinished
- defaults: completions and parallelism 1, backoffLimit 6 (MaxInt32 with
  backoffLimitPerIndex), completionMode NonIndexed -> pkg/apis/batch/v1/defaults.go
- Indexed Jobs: ``completions`` required; ``backoffLimitPerIndex`` and
  ``maxFailedIndexes`` only with completionMode Indexed, ``maxFailedIndexes`` only with
  ``backoffLimitPerIndex`` and at most ``completions``; podFailurePolicy ``FailIndex``
  only with ``backoffLimitPerIndex`` (422 otherwise) -> pkg/apis/batch/validation/validation.go
- an Indexed Job's pods: up to ``parallelism`` at once for the lowest pending indexes
  (firstPendingIndexes), named ``<job>-<index>-<random>``, the index as the
  ``batch.kubernetes.io/job-completion-index`` annotation and label, hostname
  ``<job>-<index>``, ``JOB_COMPLETION_INDEX`` in every container, init containers
  included (addCompletionIndexEnvVariables), from that label (fieldRef, resolved as the
  kubelet's downward API does: pkg/fieldpath), and the index's failures so far in
  ``batch.kubernetes.io/job-index-failure-count`` (and ``-ignored-failure-count``)
  -> pkg/controller/job/indexed_job_utils.go, job_controller.go (manageJob)
- ``status.completedIndexes`` / ``failedIndexes`` as intervals ("1,3-5", two neighbours
  "3,4"); an index fails at its ``backoffLimitPerIndex``-th counted failure or at once
  on a ``FailIndex`` rule (isIndexFailed), is retried alone after its own backoff
  (getRemainingTimePerIndex: 10 s doubling with the index's failures), and the Job
  ends ``FailureTarget`` then ``Failed`` with reason ``FailedIndexes`` once every index
  succeeded or failed and some failed (``MaxFailedIndexesExceeded`` past
  maxFailedIndexes), ``SuccessCriteriaMet`` then ``Complete`` when all succeeded
  -> indexed_job_utils.go, backoff_utils.go, job_controller.go (syncJob)
- podFailurePolicy rules in order, the first match deciding (FailJob, FailIndex,
  Ignore, Count); onExitCodes looks at the containers' statuses, then the init
  containers' -> pkg/controller/job/pod_failure_policy.go (matchPodFailurePolicy,
  matchOnExitCodes)
- init containers run one at a time, in order, each once the one before exited 0
  (pkg/kubelet/kuberuntime/kuberuntime_container.go, findNextInitContainerToRun);
  meanwhile the pod is Pending (kubelet_pods.go, getPhase) with ``Initialized=False``,
  reason ``ContainersNotInitialized``, "containers with incomplete status: [a b]"
  (pkg/kubelet/status/generate.go, GeneratePodInitializedCondition), the init
  containers not run yet and the app containers waiting with reason ``PodInitializing``;
  with restartPolicy Never an init container that fails fails the pod and nothing after
  it starts (test/e2e/common/node/init_container.go, "should not start app containers
  and fail the pod if init containers fail on a RestartNever pod"); each container's
  status in ``initContainerStatuses`` / ``containerStatuses`` (name, image, ready,
  restartCount, started, state), a finished init container ``ready``
- a pod's effective request of an extended resource (a GPU): the larger of its largest
  init container's and the sum of its app containers' -> k8s.io/component-helpers
  resource/helpers.go (PodRequests), as the scheduler's NodeResourcesFit counts it
- an emptyDir is a folder of the pod's own, shared by its containers: there are no mount
  namespaces here, so a container variable whose value is an emptyDir's mountPath (or
  under it) is given that folder instead

Timers that upstream counts in minutes (pod-failure backoff, TTL) are multiplied by
the runner's ``time_scale`` so tests stay fast; deadlines are real seconds.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import random
import re
import signal
import string
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

PROJECT_ROOT = Path(__file__).resolve().parent.parent
JOB_LABEL = "batch.kubernetes.io/job-name"
#: An Indexed Job's pod: its index (annotation and label), the failures of its index
#: before it, counted and ignored (annotations), and the variable the controller adds
#: to its containers: pkg/controller/job/indexed_job_utils.go.
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
INDEX_FAILURES = "batch.kubernetes.io/job-index-failure-count"
INDEX_IGNORED_FAILURES = "batch.kubernetes.io/job-index-ignored-failure-count"
COMPLETION_INDEX_ENV = "JOB_COMPLETION_INDEX"
#: apiserver storage/names: a generated name's prefix leaves 5 characters of suffix.
MAX_GENERATED_NAME = 63 - 5
GPU = "nvidia.com/gpu"
#: The kubelet's FallbackToLogsOnError tail: at most this many lines and bytes.
LOG_LINES, LOG_BYTES = 80, 2048
#: A container's termination message file, read up to its last 4 KiB; a pod's messages
#: are then cut to 12 KiB over its containers (pkg/kubelet/container/runtime.go).
MESSAGE_BYTES, POD_MESSAGE_BYTES = 4096, 12 * 1024
TERMINATION_LOG = "/dev/termination-log"
#: Pod-failure backoff of the Job controller (Job docs): 10 s doubling, capped at 6 min.
BACKOFF_BASE, BACKOFF_MAX = 10.0, 360.0


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- label selectors ------------------------------------------------------------------


def _terms(selector: str) -> list[str]:
    """Splits on commas outside parentheses (``a in (x,y),b``)."""
    terms, depth, current = [], 0, ""
    for char in selector:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            terms.append(current.strip())
            current = ""
        else:
            current += char
    terms.append(current.strip())
    return [t for t in terms if t]


def matches(selector: str, labels: dict[str, str]) -> bool:
    for term in _terms(selector):
        found = re.fullmatch(r"(\S+)\s+(in|notin)\s+\((.*)\)", term)
        if found:
            key, operator, values = found.groups()
            wanted = {v.strip() for v in values.split(",") if v.strip()}
            if operator == "in" and labels.get(key) not in wanted:
                return False
            # notin also matches objects without the key (selector.go).
            if operator == "notin" and labels.get(key) in wanted:
                return False
        elif "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def status_object(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }


# --- RBAC -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request as the authorizer sees it (the request info of the apiserver)."""

    verb: str
    api_group: str
    resource: str
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""

    @property
    def resource_path(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def _rule_allows(rule: dict[str, Any], call: Call) -> bool:
    """One PolicyRule against one request: evaluation_helpers.go's VerbMatches,
    APIGroupMatches, ResourceMatches (with ``*/subresource``), ResourceNameMatches and
    NonResourceURLMatches."""
    verbs = rule.get("verbs") or []
    if "*" not in verbs and call.verb not in verbs:
        return False
    if not call.resource:  # a non-resource URL (/version, /healthz)
        urls = rule.get("nonResourceURLs") or []
        return any(
            u == "*" or u == call.path or (u.endswith("*") and call.path.startswith(u[:-1]))
            for u in urls
        )
    groups = rule.get("apiGroups")
    if groups is None or ("*" not in groups and call.api_group not in groups):
        return False
    resources = rule.get("resources") or []
    wanted = call.resource_path
    if not any(
        r == "*" or r == wanted or (call.subresource and r == f"*/{call.subresource}")
        for r in resources
    ):
        return False
    names = rule.get("resourceNames") or []
    return not names or call.name in names


def allowed(rules: list[dict[str, Any]], call: Call) -> bool:
    return any(_rule_allows(rule, call) for rule in rules)


def request_info(method: str, path: str, query: dict[str, str]) -> Call:
    """The authorizer's view of a request: verb, group, resource, subresource."""
    parts = [p for p in path.split("/") if p]
    if not parts or parts[0] not in ("api", "apis"):
        return Call("get" if method == "GET" else method.lower(), "", "", path=path)
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    namespace = ""
    if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) > 2:
        namespace, rest = rest[1], rest[2:]
    resource = rest[0] if rest else ""
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    if method == "GET":
        verb = ("watch" if query.get("watch") in ("true", "1") else "list") if not name else "get"
    else:
        verb = {
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete" if name else "deletecollection",
        }.get(method, method.lower())
    return Call(verb, group, resource, subresource, namespace, name, path)


# --- the API server ---------------------------------------------------------------------


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    status: int = 500
    times: int = 1
    retry_after: float | None = None
    delay: float = 0.0  # sleep first (a slow server; a client timeout)
    #: Do the work, then fail anyway: the client never learns that it succeeded.
    after: bool = False
    reason: str = "Injected"
    message: str = "injected"


DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass
class Emulator:
    name: str
    nodes: list[dict[str, Any]] = field(default_factory=list)
    namespaces: set[str] = field(default_factory=set)
    jobs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    secrets: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    #: The uids in each Secret's ownerReferences: the garbage collector deletes a Secret
    #: whose owners are all gone (pkg/controller/garbagecollector/garbagecollector.go,
    #: attemptToDeleteItem: a dependent with no owner left is deleted).
    secret_owners: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    #: Every request as the authorizer saw it (the RBAC test checks them all).
    calls: list[Call] = field(default_factory=list)
    #: The Role's (and ClusterRole's) rules of the caller; None: everything allowed.
    rules: list[dict[str, Any]] | None = None
    user: str = "system:serviceaccount:camflow:camflow"
    #: ResourceQuota ``count/jobs.batch`` per namespace.
    job_quota: dict[str, int] = field(default_factory=dict)
    #: Images no node can pull (a typo, a private registry without a pull secret).
    unpullable: set[str] = field(default_factory=set)
    lock: threading.RLock = field(default_factory=threading.RLock)
    port: int = 0
    _server: ThreadingHTTPServer | None = None
    _version: int = 0

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> Emulator:
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                code, payload, headers = emulator.handle(self.command, self.path, body)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """The cluster goes away: connections are refused until ``start`` again."""
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, folder: Path) -> Path:
        path = folder / f"kubeconfig-{self.name}"
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": self.name,
                    "clusters": [{"name": self.name, "cluster": {"server": self.url}}],
                    "users": [{"name": "camflow", "user": {"token": "emulated"}}],
                    "contexts": [
                        {"name": self.name, "context": {"cluster": self.name, "user": "camflow"}}
                    ],
                }
            )
        )
        return path

    def inject(self, method: str, path: str, **kwargs: Any) -> None:
        with self.lock:
            self.faults.append(Fault(method, re.compile(path), **kwargs))

    # --- the API --------------------------------------------------------------------

    def stamp(self, obj: dict[str, Any], namespace: str | None) -> dict[str, Any]:
        self._version += 1
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now())
        meta["resourceVersion"] = str(self._version)
        if namespace:
            meta["namespace"] = namespace
        return obj

    _stamp = stamp

    def handle(self, method: str, raw: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        url = urlparse(raw)
        path, query = url.path, {k: v[0] for k, v in parse_qs(url.query).items()}
        with self.lock:
            self.requests.append((method, path))
            fault = next(
                (
                    f
                    for f in self.faults
                    if f.times > 0 and f.method == method and f.path.search(path)
                ),
                None,
            )
            if fault:
                fault.times -= 1
        if fault and fault.after:
            with self.lock:
                self._authorized(method, path, query, body)
        if fault:
            time.sleep(fault.delay)
            if fault.status:
                headers = (
                    {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
                )
                return (
                    fault.status,
                    status_object(fault.status, fault.reason, fault.message),
                    headers,
                )
        with self.lock:
            return self._authorized(method, path, query, body)

    def _authorized(
        self, method: str, path: str, query: dict[str, str], body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        call = request_info(method, path, query)
        self.calls.append(call)
        if self.rules is not None and not allowed(self.rules, call):
            kind = f"{call.resource}.{call.api_group}" if call.api_group else call.resource
            where = f' in the namespace "{call.namespace}"' if call.namespace else ""
            scope = "" if call.namespace or not call.resource else " at the cluster scope"
            target = f' "{call.name}"' if call.name else ""
            return (
                403,
                status_object(
                    403,
                    "Forbidden",
                    f'{kind}{target} is forbidden: User "{self.user}" cannot {call.verb} '
                    f'resource "{call.resource_path}" in API group "{call.api_group}"'
                    f"{where}{scope}",
                ),
                {},
            )
        return self._route(method, path, query, body)

    def _page(
        self, kind: str, api_version: str, items: list[dict[str, Any]], query: dict[str, str]
    ) -> tuple[int, Any, dict[str, str]]:
        """limit/continue as the apiserver does it: items in key order, a continue token
        while more remain (an opaque string; ours holds the next key)."""
        items = sorted(items, key=lambda o: o["metadata"]["name"])
        token = query.get("continue")
        if token:
            after = json.loads(base64.b64decode(token))["start"]
            items = [i for i in items if i["metadata"]["name"] >= after]
        limit = int(query.get("limit") or 0)
        meta: dict[str, Any] = {"resourceVersion": str(self._version)}
        if limit and len(items) > limit:
            meta["continue"] = base64.b64encode(
                json.dumps({"start": items[limit]["metadata"]["name"]}).encode()
            ).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        return (
            200,
            {
                "kind": kind,
                "apiVersion": api_version,
                "metadata": meta,
                "items": copy.deepcopy(items),
            },
            {},
        )

    def _route(
        self, method: str, path: str, query: dict[str, str], body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        selector = query.get("labelSelector", "")
        if path.rstrip("/") == "/version":
            return 200, {"major": "1", "minor": "34", "gitVersion": "v1.34.0-emulated"}, {}
        if path == "/api/v1/nodes":
            return self._page("NodeList", "v1", self.nodes, query)
        secret = re.fullmatch(r"/api/v1/namespaces/([^/]+)/secrets(?:/([^/]+))?", path)
        if secret:
            return self._secret(method, secret.group(1), secret.group(2), body)
        match = re.fullmatch(r"/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+))?", path)
        pods = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods(?:/([^/]+))?", path)
        if not match and not pods:
            return 404, status_object(404, "NotFound", f"the server could not find {path}"), {}
        namespace = (match or pods).group(1)  # type: ignore[union-attr]
        if namespace not in self.namespaces:
            return 404, status_object(404, "NotFound", f'namespaces "{namespace}" not found'), {}
        if pods:
            if pods.group(2) is None and method == "GET":
                items = [
                    p
                    for (ns, _), p in self.pods.items()
                    if ns == namespace and matches(selector, p["metadata"].get("labels", {}))
                ]
                return self._page("PodList", "v1", items, query)
            return 405, status_object(405, "MethodNotAllowed", method), {}
        name = match.group(2)  # type: ignore[union-attr]
        if name is None and method == "GET":
            items = [
                j
                for (ns, _), j in self.jobs.items()
                if ns == namespace and matches(selector, j["metadata"].get("labels", {}))
            ]
            return self._page("JobList", "batch/v1", items, query)
        if name is None and method == "POST":
            return self._create_job(namespace, body)
        key = (namespace, name)
        if key not in self.jobs:
            return 404, status_object(404, "NotFound", f'jobs.batch "{name}" not found'), {}
        if method == "GET":
            return 200, copy.deepcopy(self.jobs[key]), {}
        if method == "DELETE":
            policy = query.get("propagationPolicy") or (body or {}).get("propagationPolicy")
            self.delete_job(namespace, name, policy)
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}, {}
        return 405, status_object(405, "MethodNotAllowed", method), {}

    def _create_job(self, namespace: str, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        job_name = body["metadata"]["name"]
        if (namespace, job_name) in self.jobs:
            return (
                409,
                status_object(409, "AlreadyExists", f'jobs.batch "{job_name}" already exists'),
                {},
            )
        # Defaults first, as the apiserver decodes a body, then validation.
        body = copy.deepcopy(body)
        _set_job_defaults(body["spec"])
        problems = []
        # validation.go: a Job's name becomes a label value on its pods: a DNS-1123
        # label of at most 63 characters.
        if len(job_name) > 63 or not DNS_LABEL.match(job_name):
            problems.append(
                f'metadata.name: Invalid value: "{job_name}": must be no more than 63 '
                "characters and a lowercase RFC 1123 label"
            )
        for index, container in enumerate(body["spec"]["template"]["spec"]["containers"]):
            if not container.get("image"):
                problems.append(f"spec.template.spec.containers[{index}].image: Required value")
        problems += _validate_completion_mode(body["spec"])
        if problems:
            return (
                422,
                status_object(
                    422,
                    "Invalid",
                    f'Job.batch "{job_name}" is invalid: ' + ", ".join(problems),
                ),
                {},
            )
        limit = self.job_quota.get(namespace)
        used = sum(1 for ns, _ in self.jobs if ns == namespace)
        if limit is not None and used + 1 > limit:
            return (
                403,
                status_object(
                    403,
                    "Forbidden",
                    f'jobs.batch "{job_name}" is forbidden: exceeded quota: camflow-jobs, '
                    f"requested: count/jobs.batch=1, used: count/jobs.batch={used}, "
                    f"limited: count/jobs.batch={limit}",
                ),
                {},
            )
        job = self.stamp(body, namespace)
        job["status"] = {}
        self.jobs[(namespace, job_name)] = job
        return 201, copy.deepcopy(job), {}

    def _secret(
        self, method: str, namespace: str, name: str | None, body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        """core/v1 Secrets: create (409 if it exists), replace, read, delete. ``data`` is
        base64 and ``stringData`` plain text merged over it, as the apiserver's Secret
        strategy does (pkg/apis/core/v1/conversion.go); reads return ``data`` only."""
        if namespace not in self.namespaces:
            return 404, status_object(404, "NotFound", f'namespaces "{namespace}" not found'), {}
        if method == "POST" and name is None:
            name = body["metadata"]["name"]
            if (namespace, name) in self.secrets:
                exists = f'secrets "{name}" already exists'
                return 409, status_object(409, "AlreadyExists", exists), {}
        key = (namespace, name or "")
        if method in ("POST", "PUT"):
            if method == "PUT" and key not in self.secrets:
                return 404, status_object(404, "NotFound", f'secrets "{name}" not found'), {}
            data = {k: base64.b64decode(v).decode() for k, v in (body.get("data") or {}).items()}
            data |= body.get("stringData") or {}
            self.secrets[key] = data
            owners = body["metadata"].get("ownerReferences") or []
            self.secret_owners[key] = {o["uid"] for o in owners}
            stored = self.stamp({"metadata": copy.deepcopy(body["metadata"])}, namespace)
            return (201 if method == "POST" else 200), {"kind": "Secret", **stored}, {}
        if key not in self.secrets:
            return 404, status_object(404, "NotFound", f'secrets "{name}" not found'), {}
        if method == "GET":
            data = {k: base64.b64encode(v.encode()).decode() for k, v in self.secrets[key].items()}
            return 200, {"kind": "Secret", "metadata": {"name": name}, "data": data}, {}
        if method == "DELETE":
            self.secrets.pop(key)
            self.secret_owners.pop(key, None)
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}, {}
        return 405, status_object(405, "MethodNotAllowed", method), {}

    def delete_job(self, namespace: str, name: str, policy: str | None) -> None:
        """batch/v1 orphans a deleted Job's pods unless told otherwise (its registry
        strategy's DefaultGarbageCollectionPolicy); Background and Foreground delete them
        (the garbage collector's work, done here at once)."""
        job = self.jobs.pop((namespace, name), None)
        if job is None:
            return
        uid = job["metadata"]["uid"]
        for key, owners in list(self.secret_owners.items()):
            if key[0] == namespace and uid in owners:
                owners.discard(uid)
                if not owners:  # the garbage collector's work, done here at once
                    self.secrets.pop(key, None)
                    del self.secret_owners[key]
        owned = [
            k
            for k, p in self.pods.items()
            if k[0] == namespace
            and any(
                o.get("uid") == job["metadata"]["uid"]
                for o in p["metadata"].get("ownerReferences", [])
            )
        ]
        for key in owned:
            if policy in ("Background", "Foreground"):
                self.pods[key]["metadata"]["deletionTimestamp"] = now()
                self.pods.pop(key)
            else:  # Orphan: the pod stays, and runs on, without an owner
                self.pods[key]["metadata"]["ownerReferences"] = []


def _validate_completion_mode(spec: dict[str, Any]) -> list[str]:
    """pkg/apis/batch/validation/validation.go (validateJobSpec and
    validatePodFailurePolicyRule): what an Indexed Job and its per-index limits need."""
    problems = []
    mode = spec.get("completionMode")
    per_index, max_failed = spec.get("backoffLimitPerIndex"), spec.get("maxFailedIndexes")
    if mode not in (None, "NonIndexed", "Indexed"):
        problems.append(
            f'spec.completionMode: Unsupported value: "{mode}": supported values: '
            '"NonIndexed", "Indexed"'
        )
    if max_failed is not None and per_index is None:
        problems.append(
            "spec.backoffLimitPerIndex: Required value: when maxFailedIndexes is specified"
        )
    if mode == "Indexed":
        if spec.get("completions") is None:
            problems.append("spec.completions: Required value: when completion mode is Indexed")
        elif max_failed is not None and max_failed > spec["completions"]:
            problems.append(
                f"spec.maxFailedIndexes: Invalid value: {max_failed}: must be less than or "
                "equal to completions"
            )
    else:
        if per_index is not None:
            problems.append(
                f"spec.backoffLimitPerIndex: Invalid value: {per_index}: requires indexed "
                "completion mode"
            )
        if max_failed is not None:
            problems.append(
                f"spec.maxFailedIndexes: Invalid value: {max_failed}: requires indexed "
                "completion mode"
            )
    for index, rule in enumerate((spec.get("podFailurePolicy") or {}).get("rules") or []):
        if rule.get("action") == "FailIndex" and per_index is None:
            problems.append(
                f'spec.podFailurePolicy.rules[{index}].action: Invalid value: "FailIndex": '
                "requires the backoffLimitPerIndex to be set"
            )
    return problems


def _set_job_defaults(spec: dict[str, Any]) -> None:
    """pkg/apis/batch/v1/defaults.go (SetDefaults_Job): completions and parallelism 1
    when both are unset, parallelism 1, backoffLimit 6, or MaxInt32 with a
    backoffLimitPerIndex (so that only the per-index limits fail indexes), completionMode
    NonIndexed, suspend false."""
    if spec.get("completions") is None and spec.get("parallelism") is None:
        spec["completions"] = 1
    spec.setdefault("parallelism", 1)
    if spec.get("backoffLimit") is None:
        spec["backoffLimit"] = 2**31 - 1 if spec.get("backoffLimitPerIndex") is not None else 6
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)


def _parse_indexes(text: str | None) -> set[int]:
    """indexed_job_utils.go's parseIndexesFromString: "1,3-5" -> {1, 3, 4, 5}."""
    found: set[int] = set()
    for part in (text or "").split(","):
        first, _, last = part.partition("-")
        if first.isdigit():
            found.update(range(int(first), int(last or first) + 1))
    return found


def _format_indexes(indexes: set[int]) -> str:
    """indexed_job_utils.go's orderedIntervals.String: runs of three or more as "a-b",
    two neighbours as "a,b": {1, 3, 4, 5} -> "1,3-5", {3, 4} -> "3,4"."""
    runs: list[list[int]] = []
    for index in sorted(indexes):
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    parts = []
    for first, last in runs:
        if last == first:
            parts.append(str(first))
        else:
            parts.append(f"{first}{',' if last == first + 1 else '-'}{last}")
    return ",".join(parts)


# --- nodes ------------------------------------------------------------------------------


def node(
    name: str,
    labels: dict[str, str] | None = None,
    gpus: int = 0,
    taints: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    allocatable = {"cpu": "8", "memory": "32Gi"}
    if gpus:
        allocatable[GPU] = str(gpus)
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
        "spec": {"taints": taints or []},
        "status": {"allocatable": allocatable, "capacity": dict(allocatable)},
    }


def tolerates(toleration: dict[str, Any], taint: dict[str, Any]) -> bool:
    """core/v1 Toleration.ToleratesTaint: an empty effect matches every effect; an
    empty key with Exists matches every taint; Equal (the default) needs the value."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key") or ""
    if key and key != taint.get("key"):
        return False
    operator = toleration.get("operator") or "Equal"
    if operator == "Exists":
        return True
    if operator == "Equal":
        return bool(key) and (toleration.get("value") or "") == (taint.get("value") or "")
    return False


def _quantity(value: Any) -> int:
    return int(str(value or 0))


# --- the controllers and the kubelet ------------------------------------------------------


@dataclass
class _Pod:
    key: tuple[str, str]
    job: tuple[str, str]
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    started: float = 0.0  # monotonic time the kubelet took it (activeDeadlineSeconds)
    pulls: int = 0
    #: Why the kubelet stops it, if it does: DeadlineExceeded, OOMKilled, Evicted.
    stopping: str | None = None
    #: Monotonic time it reached a terminal phase (an index's backoff counts from it).
    finished: float = 0.0
    #: The container the kubelet is at: init containers in order, then the main one.
    step: int = 0
    #: Each container's state as the kubelet reports it, by name.
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Each emptyDir volume's folder on this machine, by volume name.
    volumes: dict[str, Path] = field(default_factory=dict)


@dataclass
class _JobState:
    failed: int = 0
    next_pod_at: float = 0.0
    finishing: tuple[str, str, str] | None = None  # (condition, reason, message)
    finished_at: float | None = None


class JobRunner:
    """Plays the Job controller, scheduler, kubelet and TTL controller for one cluster,
    in one loop that syncs every object each ``tick`` seconds."""

    def __init__(self, emulator: Emulator, tick: float = 0.05, time_scale: float = 0.01) -> None:
        self.emulator = emulator
        self.tick = tick
        self.time_scale = time_scale
        self.placements: dict[str, str] = {}  # job name -> node of its newest pod
        self.runs: dict[str, int] = {}  # job name -> processes started
        # (job name, container name) -> processes started: a chain Job's pod runs one
        # container per stage, so this tells how often each stage's program ran.
        self.container_runs: dict[tuple[str, str], int] = {}
        self._pods: dict[tuple[str, str], _Pod] = {}
        self._jobs: dict[str, _JobState] = {}  # by uid
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._logs = Path(tempfile.mkdtemp(prefix=f"kube-{emulator.name}-"))

    def start(self) -> JobRunner:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for pod in self._pods.values():
            if pod.process and pod.process.poll() is None:
                os.killpg(pod.process.pid, signal.SIGKILL)
                pod.process.wait()

    # --- test hooks -------------------------------------------------------------------

    def oom_kill(self, job_name: str) -> None:
        """The container of the Job's running pod goes over its memory limit."""
        self._stop_pod(job_name, "OOMKilled")

    def evict(self, job_name: str) -> None:
        """The node runs low on a resource and the kubelet evicts the Job's pod."""
        self._stop_pod(job_name, "Evicted")

    def _stop_pod(self, job_name: str, why: str) -> None:
        with self.emulator.lock:
            for pod in self._pods.values():
                labels = self.emulator.pods.get(pod.key, {}).get("metadata", {}).get("labels", {})
                if labels.get(JOB_LABEL) == job_name and pod.process and pod.stopping is None:
                    pod.stopping = why
                    os.killpg(pod.process.pid, signal.SIGKILL)

    # --- the loop ---------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.wait(self.tick):
            with self.emulator.lock:
                self._kubelet()
                for key in list(self.emulator.jobs):
                    self._sync_job(key)
                self._ttl()

    def _job_pods(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        uid = job["metadata"]["uid"]
        return [
            p
            for p in self.emulator.pods.values()
            if any(o.get("uid") == uid for o in p["metadata"].get("ownerReferences", []))
        ]

    def _set(self, job: dict[str, Any], **status: Any) -> None:
        job["status"].update(status)
        self.emulator.stamp(job, None)

    def _condition(
        self, job: dict[str, Any], kind: str, reason: str = "", message: str = ""
    ) -> None:
        item = {
            "type": kind,
            "status": "True",
            "lastProbeTime": now(),
            "lastTransitionTime": now(),
        }
        if reason:
            item |= {"reason": reason, "message": message}
        self._set(job, conditions=[*(job["status"].get("conditions") or []), item])

    def _sync_job(self, key: tuple[str, str]) -> None:
        """job_controller.go's syncJob, for a non-indexed Job of one completion or an
        Indexed Job (``_sync_indexed``)."""
        job = self.emulator.jobs[key]
        status = job["status"]
        if any(c["type"] in ("Complete", "Failed") for c in status.get("conditions") or []):
            return
        state = self._jobs.setdefault(job["metadata"]["uid"], _JobState())
        spec = job["spec"]
        pods = self._job_pods(job)
        running = [p for p in pods if p["status"]["phase"] in ("Pending", "Running")]
        if status.get("startTime") is None:
            # At the first sync, before any pod has a node.
            self._set(job, startTime=now())
        if state.finishing:
            # FailureTarget / SuccessCriteriaMet first; the terminal condition only once
            # every pod has stopped (1.31+).
            for pod in running:
                self._terminate(pod)
            if not [
                p for p in self._job_pods(job) if p["status"]["phase"] in ("Pending", "Running")
            ]:
                kind, reason, message = state.finishing
                if kind == "Complete":
                    self._set(job, completionTime=now())
                    self._condition(job, "Complete")
                else:
                    self._condition(job, "Failed", reason, message)
                self._set(job, active=0, ready=0, terminating=0)
                state.finished_at = time.monotonic()
            return
        if spec.get("completionMode") == "Indexed":
            self._sync_indexed(job, state, pods)
            return
        failed = [p for p in pods if p["status"]["phase"] == "Failed"]
        counted = [p for p in failed if not self._ignored(job, p)]
        if any(p["status"]["phase"] == "Succeeded" for p in pods):
            self._set(job, succeeded=1, failed=len(counted), active=0, ready=0)
            self._condition(
                job,
                "SuccessCriteriaMet",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            )
            state.finishing = ("Complete", "", "")
            return
        for pod in counted:
            rule = self._fail_job_rule(job, pod)
            if rule is not None:
                self._finish(job, state, len(counted), "PodFailurePolicy", rule)
                return
        deadline = spec.get("activeDeadlineSeconds")
        started = datetime.fromisoformat(status["startTime"].replace("Z", "+00:00"))
        if deadline and (datetime.now(UTC) - started).total_seconds() > deadline:
            self._finish(
                job,
                state,
                len(counted),
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            )
            return
        if len(counted) > spec.get("backoffLimit", 6):
            self._finish(
                job,
                state,
                len(counted),
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            )
            return
        if len(counted) > state.failed:
            state.failed = len(counted)
            delay = min(BACKOFF_BASE * 2 ** (state.failed - 1), BACKOFF_MAX)
            state.next_pod_at = time.monotonic() + delay * self.time_scale
        if not running and time.monotonic() >= state.next_pod_at:
            self._create_pod(job)
        pods = self._job_pods(job)
        self._set(
            job,
            # Pending pods count as active: before any of them has a node.
            active=sum(1 for p in pods if p["status"]["phase"] in ("Pending", "Running")),
            ready=sum(1 for p in pods if p["status"]["phase"] == "Running"),
            failed=len(counted),
        )

    def _finish(
        self, job: dict[str, Any], state: _JobState, failed: int, reason: str, message: str
    ) -> None:
        self._set(job, failed=failed)
        self._condition(job, "FailureTarget", reason, message)
        state.finishing = ("Failed", reason, message)

    def _policy(self, job: dict[str, Any], pod: dict[str, Any]) -> tuple[str | None, str]:
        """pod_failure_policy.go's matchPodFailurePolicy: the first rule that matches the
        failed pod decides (a nonzero exit code of a terminated container In / NotIn
        the values, or a pod condition); its action (None: no rule matched, the failure
        counts) and, for FailJob, the condition's message."""
        conditions = {(c["type"], c["status"]) for c in pod["status"].get("conditions") or []}
        rules = (job["spec"].get("podFailurePolicy") or {}).get("rules") or []
        for index, rule in enumerate(rules):
            codes = rule.get("onExitCodes")
            if codes:
                statuses = [
                    *(pod["status"].get("containerStatuses") or []),
                    *(pod["status"].get("initContainerStatuses") or []),
                ]
                for status in statuses:
                    if codes.get("containerName") and codes["containerName"] != status["name"]:
                        continue
                    code = ((status.get("state") or {}).get("terminated") or {}).get("exitCode")
                    if code in (None, 0):
                        continue
                    if (codes["operator"] == "In") != (code in codes["values"]):
                        continue
                    message = (
                        f"Container {status['name']} for pod {pod['metadata']['namespace']}/"
                        f"{pod['metadata']['name']} failed with exit code {code} matching "
                        f"{rule['action']} rule at index {index}"
                    )
                    return rule["action"], message
            elif any(
                (c["type"], c.get("status", "True")) in conditions
                for c in rule.get("onPodConditions") or []
            ):
                return rule["action"], ""
        return None, ""

    def _ignored(self, job: dict[str, Any], pod: dict[str, Any]) -> bool:
        """An Ignore rule matched (a DisruptionTarget condition, say): not counted."""
        return self._policy(job, pod)[0] == "Ignore"

    def _fail_job_rule(self, job: dict[str, Any], pod: dict[str, Any]) -> str | None:
        """A FailJob rule matched: the FailureTarget condition's message."""
        action, message = self._policy(job, pod)
        return message if action == "FailJob" else None

    # --- Indexed Jobs -----------------------------------------------------------------

    @staticmethod
    def _index(pod: dict[str, Any]) -> int:
        value = (pod["metadata"].get("annotations") or {}).get(COMPLETION_INDEX, "")
        return int(value) if value.isdigit() else -1

    @staticmethod
    def _failures(pod: dict[str, Any]) -> tuple[int, int]:
        annotations = pod["metadata"].get("annotations") or {}
        return int(annotations.get(INDEX_FAILURES) or 0), int(
            annotations.get(INDEX_IGNORED_FAILURES) or 0
        )

    def _index_failed(self, job: dict[str, Any], pod: dict[str, Any]) -> bool:
        """indexed_job_utils.go's isIndexFailed: a FailIndex rule matched, or a failure
        that counts when the index had already failed backoffLimitPerIndex times."""
        if pod["status"]["phase"] != "Failed":
            return False
        action, _message = self._policy(job, pod)
        if action == "FailIndex":
            return True
        return action != "Ignore" and self._failures(pod)[0] >= job["spec"]["backoffLimitPerIndex"]

    def _replacement_counts(
        self, job: dict[str, Any], failed: dict[str, Any] | None
    ) -> tuple[int, int]:
        """getNewIndexFailureCounts: the replaced pod's counts, plus its own failure
        (counted, or ignored when an Ignore rule matched)."""
        if failed is None:
            return 0, 0
        counted, ignored = self._failures(failed)
        return (counted, ignored + 1) if self._ignored(job, failed) else (counted + 1, ignored)

    def _backoff_left(self, failed: dict[str, Any] | None) -> float:
        """backoff_utils.go's getRemainingTimePerIndex: from the index's last failure,
        10 s doubling with each of the index's failures (counted and ignored)."""
        if failed is None:
            return 0.0
        state = self._pods.get((failed["metadata"]["namespace"], failed["metadata"]["name"]))
        count = sum(self._failures(failed)) + 1
        delay = min(BACKOFF_BASE * 2 ** (count - 1), BACKOFF_MAX) * self.time_scale
        return (state.finished if state else 0.0) + delay - time.monotonic()

    def _sync_indexed(
        self, job: dict[str, Any], state: _JobState, pods: list[dict[str, Any]]
    ) -> None:
        """syncJob and manageJob for completionMode Indexed (job_controller.go, with
        indexed_job_utils.go): an index per completion; completedIndexes and, with
        backoffLimitPerIndex, failedIndexes in the compressed form; a failed index
        retried alone up to backoffLimitPerIndex (or failed at once by FailIndex) while
        the others go on; the Job fails with reason FailedIndexes once every index has
        succeeded or failed and some failed (MaxFailedIndexesExceeded past
        maxFailedIndexes), and completes when all succeeded."""
        spec, status = job["spec"], job["status"]
        completions = spec["completions"]
        per_index = spec.get("backoffLimitPerIndex")
        active = [p for p in pods if p["status"]["phase"] in ("Pending", "Running")]
        failed = [p for p in pods if p["status"]["phase"] == "Failed"]
        counted = [p for p in failed if not self._ignored(job, p)]
        succeeded = _parse_indexes(status.get("completedIndexes")) | {
            self._index(p)
            for p in pods
            if p["status"]["phase"] == "Succeeded" and 0 <= self._index(p) < completions
        }
        failed_indexes: set[int] = set()
        update: dict[str, Any] = {
            "completedIndexes": _format_indexes(succeeded),
            "succeeded": len(succeeded),
            "failed": len(counted),
        }
        if per_index is not None:
            failed_indexes = _parse_indexes(status.get("failedIndexes")) | {
                self._index(p)
                for p in failed
                if 0 <= self._index(p) < completions and self._index_failed(job, p)
            }
            update["failedIndexes"] = _format_indexes(failed_indexes)
        self._set(job, **update)
        for pod in counted:
            rule = self._fail_job_rule(job, pod)
            if rule is not None:
                self._finish(job, state, len(counted), "PodFailurePolicy", rule)
                return
        if len(counted) > spec["backoffLimit"]:
            self._finish(
                job,
                state,
                len(counted),
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            )
            return
        max_failed = spec.get("maxFailedIndexes")
        if max_failed is not None and len(failed_indexes) > max_failed:
            self._finish(
                job,
                state,
                len(counted),
                "MaxFailedIndexesExceeded",
                "Job has exceeded the specified maximal number of failed indexes",
            )
            return
        if failed_indexes and len(failed_indexes) + len(succeeded) >= completions:
            self._finish(job, state, len(counted), "FailedIndexes", "Job has failed indexes")
            return
        if len(succeeded) >= completions and not active:
            self._set(job, active=0, ready=0)
            self._condition(
                job,
                "SuccessCriteriaMet",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            )
            state.finishing = ("Complete", "", "")
            return
        # manageJob: up to parallelism pods, for the lowest indexes neither done nor
        # active (firstPendingIndexes); with backoffLimitPerIndex each index waits out
        # its own backoff (getPodCreationInfoForIndependentIndexes), else the Job's.
        want = max(0, min(completions - len(succeeded), spec["parallelism"]))
        busy = succeeded | failed_indexes | {self._index(p) for p in active}
        pending = [i for i in range(completions) if i not in busy][: max(0, want - len(active))]
        last_failed: dict[int, dict[str, Any]] = {}
        for pod in sorted(failed, key=lambda p: sum(self._failures(p))):
            last_failed[self._index(pod)] = pod
        if per_index is None:
            if len(counted) > state.failed:
                state.failed = len(counted)
                delay = min(BACKOFF_BASE * 2 ** (state.failed - 1), BACKOFF_MAX)
                state.next_pod_at = time.monotonic() + delay * self.time_scale
            ready = pending if time.monotonic() >= state.next_pod_at else []
        else:
            ready = [i for i in pending if self._backoff_left(last_failed.get(i)) <= 0]
        for index in ready:
            counts = self._replacement_counts(job, last_failed.get(index))
            self._create_pod(job, index, counts if per_index is not None else None)
        pods = self._job_pods(job)
        self._set(
            job,
            active=sum(1 for p in pods if p["status"]["phase"] in ("Pending", "Running")),
            ready=sum(1 for p in pods if p["status"]["phase"] == "Running"),
        )

    def _create_pod(
        self,
        job: dict[str, Any],
        index: int | None = None,
        failures: tuple[int, int] | None = None,
    ) -> None:
        """A pod from the Job's template. For an Indexed Job (manageJob with
        indexed_job_utils.go): named ``<job>-<index>-<random>`` (podGenerateNameWithIndex),
        its index as annotation and label, hostname ``<job>-<index>``, JOB_COMPLETION_INDEX
        from the label (addCompletionIndexEnvVariable), and with backoffLimitPerIndex the
        index's failures so far (addIndexFailureCountAnnotation)."""
        namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
        suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        template = job["spec"]["template"].get("metadata") or {}
        annotations = dict(template.get("annotations") or {})
        labels = dict(template.get("labels") or {})
        spec = copy.deepcopy(job["spec"]["template"]["spec"])
        prefix = f"{name}-"
        if index is not None:
            prefix = f"{name}-{index}-"
            if len(prefix) > MAX_GENERATED_NAME:
                prefix = f"{name[: MAX_GENERATED_NAME - len(str(index)) - 2]}-{index}-"
            annotations[COMPLETION_INDEX] = labels[COMPLETION_INDEX] = str(index)
            spec["hostname"] = f"{name}-{index}"
            # addCompletionIndexEnvVariables: the init containers' too.
            for container in [*(spec.get("initContainers") or []), *spec["containers"]]:
                if all(e["name"] != COMPLETION_INDEX_ENV for e in container.get("env") or []):
                    field_path = f"metadata.labels['{COMPLETION_INDEX}']"
                    container.setdefault("env", []).append(
                        {
                            "name": COMPLETION_INDEX_ENV,
                            "valueFrom": {"fieldRef": {"fieldPath": field_path}},
                        }
                    )
            if failures is not None:
                annotations[INDEX_FAILURES] = str(failures[0])
                if failures[1]:
                    annotations[INDEX_IGNORED_FAILURES] = str(failures[1])
        pod_name = f"{prefix}{suffix}"
        uid = job["metadata"]["uid"]
        pod = {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": pod_name,
                "annotations": annotations,
                "labels": {
                    **labels,
                    JOB_LABEL: name,
                    "job-name": name,
                    "batch.kubernetes.io/controller-uid": uid,
                    "controller-uid": uid,
                },
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": name,
                        "uid": uid,
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": spec,
            "status": {"phase": "Pending", "conditions": []},
        }
        self.emulator.pods[(namespace, pod_name)] = self.emulator.stamp(pod, namespace)
        self._pods[(namespace, pod_name)] = _Pod((namespace, pod_name), (namespace, name))

    # --- scheduler and kubelet --------------------------------------------------------

    @staticmethod
    def _gpus(spec: dict[str, Any]) -> int:
        """The pod's effective GPUs: its largest init container's, or the sum of its app
        containers', whichever is larger (PodRequests)."""

        def gpus(container: dict[str, Any]) -> int:
            return _quantity(container.get("resources", {}).get("limits", {}).get(GPU))

        init = max((gpus(c) for c in spec.get("initContainers") or []), default=0)
        return max(init, sum(gpus(c) for c in spec["containers"]))

    def _gpus_used(self, node_name: str) -> int:
        return sum(
            self._gpus(p["spec"])
            for p in self.emulator.pods.values()
            if p["spec"].get("nodeName") == node_name
            and p["status"]["phase"] in ("Pending", "Running")
        )

    def _schedule(self, pod: dict[str, Any]) -> str | None:
        spec = pod["spec"]
        wanted = self._gpus(spec)
        reasons: dict[str, int] = {}
        for candidate in self.emulator.nodes:
            labels = candidate["metadata"]["labels"]
            if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
                reasons["node(s) didn't match Pod's node affinity/selector"] = (
                    reasons.get("node(s) didn't match Pod's node affinity/selector", 0) + 1
                )
                continue
            untolerated = [
                t
                for t in candidate["spec"].get("taints") or []
                if t.get("effect") in ("NoSchedule", "NoExecute")
                and not any(tolerates(tol, t) for tol in spec.get("tolerations") or [])
            ]
            if untolerated:
                taint = untolerated[0]
                text = f"node(s) had untolerated taint {{{taint['key']}: {taint.get('value', '')}}}"
                reasons[text] = reasons.get(text, 0) + 1
                continue
            free = _quantity(candidate["status"]["allocatable"].get(GPU)) - self._gpus_used(
                candidate["metadata"]["name"]
            )
            if wanted > free:
                reasons[f"Insufficient {GPU}"] = reasons.get(f"Insufficient {GPU}", 0) + 1
                continue
            return candidate["metadata"]["name"]
        detail = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
        self._pod_condition(
            pod,
            "PodScheduled",
            "False",
            "Unschedulable",
            f"0/{len(self.emulator.nodes)} nodes are available: {detail}. preemption: 0/"
            f"{len(self.emulator.nodes)} nodes are available: {len(self.emulator.nodes)} "
            "Preemption is not helpful for scheduling.",
        )
        return None

    def _pod_condition(
        self, pod: dict[str, Any], kind: str, status: str, reason: str = "", message: str = ""
    ) -> None:
        conditions = [c for c in pod["status"].get("conditions") or [] if c["type"] != kind]
        old = next((c for c in pod["status"].get("conditions") or [] if c["type"] == kind), None)
        changed = old is None or old["status"] != status
        item = {
            "type": kind,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": now() if changed else old["lastTransitionTime"],  # type: ignore[index]
        }
        if reason:
            item |= {"reason": reason, "message": message}
        pod["status"]["conditions"] = [*conditions, item]

    @staticmethod
    def _sequence(pod: dict[str, Any]) -> list[dict[str, Any]]:
        """What the kubelet runs, in order: the init containers, then the (first) app
        container."""
        return [*(pod["spec"].get("initContainers") or []), pod["spec"]["containers"][0]]

    def _container_status(
        self, pod: dict[str, Any], pod_state: _Pod, state: dict[str, Any]
    ) -> None:
        """The current container's state, then every container's status as the kubelet
        reports it: the init containers' (a finished one ready), the app container's
        (waiting PodInitializing while init containers have not all finished), and the
        pod's Initialized condition."""
        current = self._sequence(pod)[pod_state.step]
        pod_state.states[current["name"]] = state
        inits = pod["spec"].get("initContainers") or []

        def status(container: dict[str, Any], init: bool) -> dict[str, Any]:
            own = pod_state.states.get(container["name"])
            waiting = {"waiting": {"reason": "PodInitializing"}}
            done = init and ((own or {}).get("terminated") or {}).get("exitCode") == 0
            return {
                "name": container["name"],
                "image": container["image"],
                "imageID": "",
                "ready": done or (not init and "running" in (own or {})),
                "restartCount": 0,
                "started": "running" in (own or {}),
                "state": own or waiting,
            }

        if inits:
            pod["status"]["initContainerStatuses"] = [status(c, True) for c in inits]
            incomplete = [
                s["name"] for s in pod["status"]["initContainerStatuses"] if not s["ready"]
            ]
            if incomplete:
                self._pod_condition(
                    pod,
                    "Initialized",
                    "False",
                    "ContainersNotInitialized",
                    f"containers with incomplete status: [{' '.join(incomplete)}]",
                )
            else:
                self._pod_condition(pod, "Initialized", "True")
        main = pod["spec"]["containers"][0]
        if inits or main["name"] in pod_state.states:
            pod["status"]["containerStatuses"] = [status(main, False)]

    def _mounts(
        self, pod: dict[str, Any], state: _Pod, container: dict[str, Any]
    ) -> dict[str, Path]:
        """The container's emptyDir mounts: mountPath -> the pod's folder for it."""
        empty = {v["name"] for v in pod["spec"].get("volumes") or [] if "emptyDir" in v}
        mounts = {}
        for mount in container.get("volumeMounts") or []:
            if mount["name"] in empty:
                if mount["name"] not in state.volumes:
                    folder = self._logs / f"{pod['metadata']['name']}-{mount['name']}"
                    folder.mkdir(exist_ok=True)
                    state.volumes[mount["name"]] = folder
                mounts[mount["mountPath"].rstrip("/")] = state.volumes[mount["name"]]
        return mounts

    def _env(
        self, pod: dict[str, Any], container: dict[str, Any], state: _Pod | None = None
    ) -> dict[str, str] | str:
        """The container's environment, or why it cannot be made (a missing Secret).
        A fieldRef reads the pod's own metadata, as the kubelet's downward API does
        (pkg/fieldpath/fieldpath.go: name, namespace, labels['k'], annotations['k']).
        A value naming an emptyDir's mount path names the pod's folder for it."""
        env = self._resolve_env(pod, container)
        if isinstance(env, str) or state is None:
            return env
        for path, folder in self._mounts(pod, state, container).items():
            for key, value in env.items():
                if value == path or value.startswith(f"{path}/"):
                    env[key] = f"{folder}{value[len(path) :]}"
        message = container.get("terminationMessagePath") or TERMINATION_LOG
        for key, value in env.items():
            if value == message:
                env[key] = str(self._message_file(pod, state, container))
        return env

    def _resolve_env(self, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str] | str:
        namespace = pod["metadata"]["namespace"]
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AWS_", "CAMFLOW_")) and k != COMPLETION_INDEX_ENV
        }
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
                continue
            field = item["valueFrom"].get("fieldRef")
            if field:
                path = field["fieldPath"]
                found = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
                meta = pod["metadata"]
                if found:
                    env[item["name"]] = (meta.get(found[1]) or {}).get(found[2], "")
                else:
                    env[item["name"]] = str(meta.get(path.removeprefix("metadata."), ""))
                continue
            ref = item["valueFrom"]["secretKeyRef"]
            secret = self.emulator.secrets.get((namespace, ref["name"]))
            if secret is None:
                return f'secret "{ref["name"]}" not found'
            if ref["key"] not in secret:
                return f"couldn't find key {ref['key']} in Secret {namespace}/{ref['name']}"
            env[item["name"]] = secret[ref["key"]]
        return env

    def _kubelet(self) -> None:
        for key, state in list(self._pods.items()):
            pod = self.emulator.pods.get(key)
            if pod is None:  # deleted (Background/Foreground, the TTL): stop its process
                if state.process and state.process.poll() is None:
                    self._kill(state, grace=True)
                if state.process is None or state.process.poll() is not None:
                    del self._pods[key]
                continue
            phase = pod["status"]["phase"]
            if phase in ("Succeeded", "Failed"):
                continue
            if not pod["spec"].get("nodeName"):
                node_name = self._schedule(pod)
                if node_name is None:
                    continue
                pod["spec"]["nodeName"] = node_name
                self._pod_condition(pod, "PodScheduled", "True")
                pod["status"]["startTime"] = now()
                state.started = time.monotonic()
                self.placements[state.job[1]] = node_name
            deadline = pod["spec"].get("activeDeadlineSeconds")
            if deadline and time.monotonic() - state.started > deadline and state.stopping is None:
                state.stopping = "DeadlineExceeded"
                if state.process is None:
                    self._finish_pod(pod, state, None)
                    continue
                self._kill(state, grace=True)
            if state.process is None:
                self._start_container(pod, state)
                continue
            code = state.process.poll()
            if code is None:
                continue
            if code == 0 and state.stopping is None and state.step < len(self._sequence(pod)) - 1:
                self._next_container(pod, state)
                continue
            self._finish_pod(pod, state, code)

    def _next_container(self, pod: dict[str, Any], state: _Pod) -> None:
        """An init container exited 0: it is done (ready), and the next one starts at
        the kubelet's next sync."""
        self._container_status(pod, state, {"terminated": self._terminated(pod, state, 0)})
        state.step += 1
        state.process = None
        self.emulator.stamp(pod, None)

    def _terminated(self, pod: dict[str, Any], state: _Pod, code: int) -> dict[str, Any]:
        """The current container's terminated state: exit code, reason, times, and with
        FallbackToLogsOnError its log's tail when it failed."""
        container = self._sequence(pod)[state.step]
        started = (state.states.get(container["name"]) or {}).get("running", {}).get("startedAt")
        reason = "Completed" if code == 0 else "Error"
        if state.stopping == "OOMKilled":
            reason, code = "OOMKilled", 137
        terminated = {
            "exitCode": code,
            "reason": reason,
            "startedAt": started,
            "finishedAt": now(),
            "containerID": f"containerd://{uuid.uuid4().hex}",
        }
        written = self._message_file(pod, state, container)
        message = (
            written.read_bytes()[-MESSAGE_BYTES:].decode(errors="replace")
            if written.exists()
            else ""
        )
        if (
            not message
            and code != 0
            and container.get("terminationMessagePolicy") == "FallbackToLogsOnError"
            and state.log
        ):
            tail = state.log.read_bytes().decode(errors="replace").splitlines()[-LOG_LINES:]
            message = "\n".join(tail)[-LOG_BYTES:]
        if message:
            # normalizeStatus: the first 12 KiB / containers of each message.
            terminated["message"] = message[: POD_MESSAGE_BYTES // len(self._sequence(pod))]
        return terminated

    def _message_file(self, pod: dict[str, Any], state: _Pod, container: dict[str, Any]) -> Path:
        """The file the kubelet mounts at the container's terminationMessagePath."""
        return self._logs / f"{pod['metadata']['name']}-{container['name']}.termination-log"

    def _start_container(self, pod: dict[str, Any], state: _Pod) -> None:
        container = self._sequence(pod)[state.step]
        init = state.step < len(self._sequence(pod)) - 1
        if container["image"] in self.emulator.unpullable:
            state.pulls += 1
            reason = "ErrImagePull" if state.pulls <= 2 else "ImagePullBackOff"
            message = (
                f'Back-off pulling image "{container["image"]}"'
                if reason == "ImagePullBackOff"
                else f'failed to pull and unpack image "{container["image"]}": not found'
            )
            self._container_status(pod, state, {"waiting": {"reason": reason, "message": message}})
            return
        env = self._env(pod, container, state)
        if isinstance(env, str):
            self._container_status(
                pod, state, {"waiting": {"reason": "CreateContainerConfigError", "message": env}}
            )
            return
        command = list(container["command"])
        if command[0] in ("python", "python3"):
            command[0] = sys.executable
        job_name = state.job[1]
        self.runs[job_name] = self.runs.get(job_name, 0) + 1
        ran = (job_name, container["name"])
        self.container_runs[ran] = self.container_runs.get(ran, 0) + 1
        state.log = self._logs / f"{pod['metadata']['name']}-{container['name']}.log"
        with state.log.open("wb") as log:
            # One log, stdout and stderr together, as the container runtime keeps it.
            state.process = subprocess.Popen(
                command,
                env=env,
                cwd=PROJECT_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._container_status(pod, state, {"running": {"startedAt": now()}})
        if not init:  # Pending while init containers run (getPhase)
            pod["status"]["phase"] = "Running"
            self._pod_condition(pod, "Ready", "True")

    def _kill(self, state: _Pod, grace: bool) -> None:
        """SIGTERM, then SIGKILL after the grace period, as the kubelet stops a container."""
        if state.process is None or state.process.poll() is not None:
            return
        try:
            os.killpg(state.process.pid, signal.SIGTERM if grace else signal.SIGKILL)
        except ProcessLookupError:
            return
        if grace:
            try:
                state.process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                os.killpg(state.process.pid, signal.SIGKILL)
                state.process.wait()

    def _terminate(self, pod: dict[str, Any]) -> None:
        state = self._pods.get((pod["metadata"]["namespace"], pod["metadata"]["name"]))
        if state is None:
            return
        if state.process is None:
            self._finish_pod(pod, state, None)
        else:
            self._kill(state, grace=True)
            self._finish_pod(pod, state, state.process.returncode)

    def _finish_pod(self, pod: dict[str, Any], state: _Pod, code: int | None) -> None:
        state.finished = time.monotonic()
        pod["status"]["conditions"] = [
            c for c in pod["status"].get("conditions") or [] if c["type"] != "Ready"
        ]
        if code is None:  # never started
            pod["status"]["phase"] = "Failed"
            if state.stopping == "DeadlineExceeded":
                pod["status"] |= {
                    "reason": "DeadlineExceeded",
                    "message": "Pod was active on the node longer than the specified deadline",
                }
            return
        code = code if code >= 0 else 128 - code
        terminated = self._terminated(pod, state, code)
        code = terminated["exitCode"]
        self._container_status(pod, state, {"terminated": terminated})
        pod["status"]["phase"] = "Succeeded" if code == 0 else "Failed"
        if state.stopping == "DeadlineExceeded":
            pod["status"] |= {
                "phase": "Failed",
                "reason": "DeadlineExceeded",
                "message": "Pod was active on the node longer than the specified deadline",
            }
        elif state.stopping == "Evicted":
            pod["status"] |= {
                "phase": "Failed",
                "reason": "Evicted",
                "message": "The node was low on resource: memory. Threshold quantity: 100Mi, "
                "available: 80Mi. ",
            }
            self._pod_condition(
                pod,
                "DisruptionTarget",
                "True",
                "TerminationByKubelet",
                "The node was low on resource: memory.",
            )
        self.emulator.stamp(pod, None)

    def _ttl(self) -> None:
        """ttlafterfinished: a finished Job goes ttlSecondsAfterFinished after it
        finished, its pods first (Foreground)."""
        for key, job in list(self.emulator.jobs.items()):
            ttl = job["spec"].get("ttlSecondsAfterFinished")
            state = self._jobs.get(job["metadata"]["uid"])
            if ttl is None or state is None or state.finished_at is None:
                continue
            if time.monotonic() - state.finished_at >= ttl * self.time_scale:
                self.emulator.delete_job(*key, "Foreground")
