"""A Kubernetes API server emulator over real HTTP, and a job runner.

The official client talks to it as to a cluster: namespaced Jobs and Pods, label
selectors, 404 and 409 as Status objects, uid, resourceVersion and timestamps, nodes,
and injected faults (5xx, 429 with Retry-After, slow answers, the whole server going
away and coming back). The job runner plays the Job controller, scheduler and kubelet:
it places each pod on a node its nodeSelector, tolerations and GPU limit allow, runs
the container's command as a local process with the container's environment, and
writes pods and Job status back, honouring backoffLimit, podFailurePolicy and
deadlines. No kube-apiserver can run on these machines; this is the stand-in.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
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


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def matches(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def status_object(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


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


@dataclass
class Emulator:
    name: str
    nodes: list[dict[str, Any]] = field(default_factory=list)
    namespaces: set[str] = field(default_factory=set)
    jobs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    secrets: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
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

    def _stamp(self, obj: dict[str, Any], namespace: str | None) -> dict[str, Any]:
        self._version += 1
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now())
        meta["resourceVersion"] = str(self._version)
        if namespace:
            meta["namespace"] = namespace
        return obj

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
                self._route(method, path, query, body)
        if fault:
            time.sleep(fault.delay)
            if fault.status:
                headers = (
                    {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
                )
                return fault.status, status_object(fault.status, "Injected", "injected"), headers
        with self.lock:
            return self._route(method, path, query, body)

    def _route(
        self, method: str, path: str, query: dict[str, str], body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        selector = query.get("labelSelector", "")
        if path == "/version":
            return 200, {"major": "1", "minor": "34", "gitVersion": "v1.34.0-emulated"}, {}
        if path == "/api/v1/nodes":
            return (
                200,
                {"kind": "NodeList", "apiVersion": "v1", "metadata": {}, "items": self.nodes},
                {},
            )
        match = re.fullmatch(r"/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+))?", path)
        pods = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods", path)
        if not match and not pods:
            return 404, status_object(404, "NotFound", f"the server could not find {path}"), {}
        namespace = (match or pods).group(1)  # type: ignore[union-attr]
        if namespace not in self.namespaces:
            return 404, status_object(404, "NotFound", f'namespaces "{namespace}" not found'), {}
        if pods:
            items = [
                p
                for (ns, _), p in self.pods.items()
                if ns == namespace and matches(selector, p["metadata"].get("labels", {}))
            ]
            return (
                200,
                {
                    "kind": "PodList",
                    "apiVersion": "v1",
                    "metadata": {},
                    "items": copy.deepcopy(items),
                },
                {},
            )
        name = match.group(2)  # type: ignore[union-attr]
        if name is None and method == "GET":
            items = [
                j
                for (ns, _), j in self.jobs.items()
                if ns == namespace and matches(selector, j["metadata"].get("labels", {}))
            ]
            return (
                200,
                {
                    "kind": "JobList",
                    "apiVersion": "batch/v1",
                    "metadata": {"resourceVersion": str(self._version)},
                    "items": copy.deepcopy(items),
                },
                {},
            )
        if name is None and method == "POST":
            job_name = body["metadata"]["name"]
            if (namespace, job_name) in self.jobs:
                return (
                    409,
                    status_object(409, "AlreadyExists", f'jobs.batch "{job_name}" already exists'),
                    {},
                )
            job = self._stamp(copy.deepcopy(body), namespace)
            job["status"] = {}
            self.jobs[(namespace, job_name)] = job
            return 201, copy.deepcopy(job), {}
        key = (namespace, name)
        if key not in self.jobs:
            return 404, status_object(404, "NotFound", f'jobs.batch "{name}" not found'), {}
        if method == "GET":
            return 200, copy.deepcopy(self.jobs[key]), {}
        if method == "DELETE":
            del self.jobs[key]
            for pod_key in [
                k
                for k, p in self.pods.items()
                if k[0] == namespace and p["metadata"]["labels"].get("job-name") == name
            ]:
                del self.pods[pod_key]
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}, {}
        return 405, status_object(405, "MethodNotAllowed", method), {}


def node(
    name: str,
    labels: dict[str, str] | None = None,
    gpus: int = 0,
    taints: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    allocatable = {"cpu": "8", "memory": "32Gi"}
    if gpus:
        allocatable["nvidia.com/gpu"] = str(gpus)
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
        "spec": {"taints": taints or []},
        "status": {"allocatable": allocatable, "capacity": dict(allocatable)},
    }


class JobRunner:
    """Plays controller, scheduler and kubelet for one emulated cluster."""

    def __init__(self, emulator: Emulator, tick: float = 0.1) -> None:
        self.emulator = emulator
        self.tick = tick
        self.started: set[tuple[str, str]] = set()
        self.placements: dict[str, str] = {}  # job name -> node name
        self.runs: dict[str, int] = {}  # job name -> processes started
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> JobRunner:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.tick):
            with self.emulator.lock:
                fresh = [k for k in self.emulator.jobs if k not in self.started]
                self.started.update(fresh)
            for key in fresh:
                threading.Thread(target=self._run_job, args=(key,), daemon=True).start()

    def _job(self, key: tuple[str, str]) -> dict[str, Any] | None:
        with self.emulator.lock:
            return self.emulator.jobs.get(key)

    def _place(self, pod_spec: dict[str, Any]) -> dict[str, Any] | None:
        container = pod_spec["containers"][0]
        gpus = int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
        tolerated = {t["key"] for t in pod_spec.get("tolerations", [])}
        for candidate in self.emulator.nodes:
            labels = candidate["metadata"]["labels"]
            if any(labels.get(k) != v for k, v in pod_spec.get("nodeSelector", {}).items()):
                continue
            if any(t["key"] not in tolerated for t in candidate["spec"]["taints"]):
                continue
            if gpus > int(candidate["status"]["allocatable"].get("nvidia.com/gpu", 0)):
                continue
            return candidate
        return None

    def _env(self, namespace: str, container: dict[str, Any]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CAMFLOW_"))}
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
            else:
                ref = item["valueFrom"]["secretKeyRef"]
                env[item["name"]] = self.emulator.secrets[(namespace, ref["name"])][ref["key"]]
        return env

    def _set_status(self, key: tuple[str, str], **status: Any) -> None:
        with self.emulator.lock:
            job = self.emulator.jobs.get(key)
            if job is not None:
                job["status"].update(status)
                self.emulator._stamp(job, None)

    def _run_job(self, key: tuple[str, str]) -> None:
        namespace, name = key
        job = self._job(key)
        if job is None:
            return
        spec = job["spec"]
        pod_spec = spec["template"]["spec"]
        placed = self._place(pod_spec)
        while placed is None:  # Unschedulable: stays pending, as a real scheduler does
            if self._job(key) is None or self._stop.wait(self.tick):
                return
        self.placements[name] = placed["metadata"]["name"]
        started = now()
        self._set_status(key, startTime=started, active=1)
        deadline = time.monotonic() + spec.get("activeDeadlineSeconds", 10**6)
        failed = 0
        for index in range(spec.get("backoffLimit", 6) + 1):
            code, _message, pod_deadline = self._run_pod(key, job, placed, index, deadline)
            if self._job(key) is None:
                return  # deleted: cancelled
            if code == 0:
                self._set_status(
                    key,
                    active=0,
                    succeeded=1,
                    failed=failed,
                    completionTime=now(),
                    conditions=[
                        {"type": "Complete", "status": "True", "lastTransitionTime": now()}
                    ],
                )
                return
            failed += 1
            if time.monotonic() >= deadline:
                return self._fail(
                    key, failed, "DeadlineExceeded", "Job was active longer than specified deadline"
                )
            fail_rule = next(
                (
                    r
                    for r in spec.get("podFailurePolicy", {}).get("rules", [])
                    if r["action"] == "FailJob"
                    and "onExitCodes" in r
                    and code in r["onExitCodes"]["values"]
                ),
                None,
            )
            if fail_rule and not pod_deadline:
                return self._fail(
                    key,
                    failed,
                    "PodFailurePolicy",
                    f"Container stage for pod {namespace}/{name}-{index} failed "
                    f"with exit code {code} matching FailJob rule at index 0",
                )
            self._set_status(key, failed=failed)
        self._fail(
            key, failed, "BackoffLimitExceeded", "Job has reached the specified backoff limit"
        )

    def _fail(self, key: tuple[str, str], failed: int, reason: str, message: str) -> None:
        self._set_status(
            key,
            active=0,
            failed=failed,
            conditions=[
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": reason,
                    "message": message,
                    "lastTransitionTime": now(),
                }
            ],
        )

    def _run_pod(
        self,
        key: tuple[str, str],
        job: dict[str, Any],
        placed: dict[str, Any],
        index: int,
        job_deadline: float,
    ) -> tuple[int, str, bool]:
        namespace, name = key
        pod_spec = job["spec"]["template"]["spec"]
        container = pod_spec["containers"][0]
        pod_name = f"{name}-{index}"
        pod = {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": pod_name,
                "labels": {**job["spec"]["template"]["metadata"]["labels"], "job-name": name},
            },
            "spec": {**copy.deepcopy(pod_spec), "nodeName": placed["metadata"]["name"]},
            "status": {"phase": "Running", "startTime": now()},
        }
        with self.emulator.lock:
            self.emulator.pods[(namespace, pod_name)] = self.emulator._stamp(pod, namespace)
        command = list(container["command"])
        if command[0] in ("python", "python3"):
            command[0] = sys.executable
        self.runs[name] = self.runs.get(name, 0) + 1
        process = subprocess.Popen(
            command,
            env=self._env(namespace, container),
            cwd=PROJECT_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        pod_deadline = time.monotonic() + pod_spec.get("activeDeadlineSeconds", 10**6)
        stderr_chunks: list[bytes] = []
        reader = threading.Thread(
            target=lambda: stderr_chunks.append(process.stderr.read()), daemon=True
        )  # type: ignore[union-attr]
        reader.start()
        timed_out = False
        while process.poll() is None:
            if self._job(key) is None or time.monotonic() > min(pod_deadline, job_deadline):
                timed_out = self._job(key) is not None
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                break
            time.sleep(0.05)
        reader.join(timeout=5)
        code = process.returncode if process.returncode >= 0 else 128 - process.returncode
        log = b"".join(stderr_chunks).decode(errors="replace")
        # FallbackToLogsOnError: the log's tail is the termination message.
        message = "\n".join(log.splitlines()[-80:])[-2048:]
        terminated = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "message": message,
            "startedAt": pod["status"]["startTime"],
            "finishedAt": now(),
        }
        status: dict[str, Any] = {
            "phase": "Succeeded" if code == 0 else "Failed",
            "containerStatuses": [{"name": container["name"], "state": {"terminated": terminated}}],
        }
        if timed_out:
            status.update(
                phase="Failed",
                reason="DeadlineExceeded",
                message="Pod was active on the node longer than the specified deadline",
            )
            terminated["message"] = f"timed out after {pod_spec.get('activeDeadlineSeconds')} s"
        with self.emulator.lock:
            if (namespace, pod_name) in self.emulator.pods:
                self.emulator.pods[(namespace, pod_name)]["status"].update(status)
        return code, message, timed_out
