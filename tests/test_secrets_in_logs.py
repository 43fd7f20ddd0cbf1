"""No secret ends up in a log or a result.

A `camflow serve`, started as an operator starts it, is given secrets it must use but
never write down: the S3 access key and secret (of an S3 over HTTP, moto here), a
PostgreSQL URL with a password (the test server trusts local connections, so any
password works), API keys. It runs whole pipelines, a good clip and a broken one; a
camera uploads through its grant, a customer reads results and artifacts, signs in to
the dashboard and out, and someone tries a wrong key. Then every file under camflow's
home (stage logs, runner logs, launch and status files), serve's stdout and stderr,
every object in the results bucket (result.json, manifests, stage outputs) and the runs
and attempts in the store are searched for each secret, and for the credentials stages
were issued; those may be only where a batch's stage process reads them.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from orchestrator.embedded_s3 import EmbeddedS3
from orchestrator.executors import local_runner as files
from orchestrator.storage import S3Access, S3Gateway
from tests.conftest import SampleClips
from tests.postgres import fresh_schema
from tests.serving import camflow, free_port, upload, wait_until_up

pytestmark = pytest.mark.slow


@pytest.fixture
def issued_keys(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every IAM access key the suite's S3 server (moto, in this process) issues: the
    per-execution credentials stages get are secrets too."""
    from moto.iam.models import IAMBackend

    made: list[tuple[str, str]] = []
    original = IAMBackend.create_access_key

    def recording(self: Any, *args: Any, **kwargs: Any) -> Any:
        key = original(self, *args, **kwargs)
        made.append((key.access_key_id, key.secret_access_key))
        return key

    monkeypatch.setattr(IAMBackend, "create_access_key", recording)
    return made


@pytest.fixture
def password_url() -> Iterator[str]:
    from sqlalchemy.exc import OperationalError

    try:
        with fresh_schema("camflow_secrets") as url:
            yield url
    except OperationalError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL not reachable: {exc.orig}")


def _with_password(url: str, password: str) -> str:
    # postgresql+psycopg://postgres@host/db -> postgresql+psycopg://postgres:pw@host/db
    user_at = re.search(r"://([^@/]+)@", url)
    assert user_at, url
    return url.replace(f"://{user_at[1]}@", f"://{user_at[1]}:{password}@", 1)


def _finished(base: str, headers: dict[str, str], count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 240
    while True:
        runs: list[dict[str, Any]] = httpx.get(f"{base}/v1/runs", headers=headers).json()["items"]
        if len(runs) >= count and all(r["status"] in ("succeeded", "failed") for r in runs):
            return runs
        assert time.monotonic() < deadline, runs
        time.sleep(0.5)


def _use_the_dashboard(base: str, customer_key: str) -> list[str]:
    """Signs in, looks around, signs out; returns the session id and tokens it held."""
    with httpx.Client(base_url=base, follow_redirects=True) as browser:
        page = browser.get("/dashboard/login")
        token = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert token
        signed = browser.post("/dashboard/login", data={"key": customer_key, "csrf": token[1]})
        assert signed.status_code == 200 and 'id="runs"' in signed.text
        session_id = browser.cookies.get("camflow_session")
        assert session_id
        for run in re.findall(r'href="/dashboard/runs/([^"]+)"', signed.text):
            assert browser.get(f"/dashboard/runs/{run}").status_code == 200
        out = browser.get("/dashboard/logout")
        logout = re.search(r'name="csrf" value="([^"]+)"', out.text)
        assert logout
        assert browser.post("/dashboard/logout", data={"csrf": logout[1]}).status_code == 200
        return [session_id, token[1], logout[1]]


def _around(content: bytes, secret: str) -> str:
    """Where ``secret`` is in ``content``, to say what wrote it (itself masked)."""
    at = content.index(secret.encode())
    near = content[max(0, at - 150) : at + len(secret) + 60].decode(errors="replace")
    return near.replace(secret, "<SECRET>")


def _is_handoff(path: Path) -> bool:
    """A batch's items, or more items for its warm process (however renamed once
    taken): what its stage process reads, each clip's credentials among them
    (orchestrator.executors.local)."""
    return path.name == files.BATCH_ITEMS or (
        path.parent.name == files.MORE and ".json" in path.name
    )


def _files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            yield path


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_secret_is_written_to_a_log_or_a_result(
    log_format: str,
    tmp_path: Path,
    s3_server: EmbeddedS3,
    password_url: str,
    clips: SampleClips,
    issued_keys: list[tuple[str, str]],
) -> None:
    access_key_id = "AKIA" + secrets.token_hex(8).upper()
    secret_access_key = "s3secret" + secrets.token_urlsafe(24).replace("-", "x").replace("_", "y")
    db_password = "dbpw" + secrets.token_hex(12)
    suffix = uuid.uuid4().hex[:8]
    ingest, results = f"ingest-{suffix}", f"results-{suffix}"
    home = tmp_path / "home"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CAMFLOW_"))}
    env.update(
        CAMFLOW_HOME=str(home),
        CAMFLOW_STORE__URL=_with_password(password_url, db_password),
        CAMFLOW_S3__ENDPOINT_URL=s3_server.endpoint_url,
        CAMFLOW_S3__EMBEDDED="false",
        CAMFLOW_S3__ACCESS_KEY_ID=access_key_id,
        CAMFLOW_S3__SECRET_ACCESS_KEY=secret_access_key,
        CAMFLOW_S3__INGEST_BUCKET=ingest,
        CAMFLOW_S3__RESULTS_BUCKET=results,
        CAMFLOW_API__PORT=str(port),
        CAMFLOW_WATCHER__RECONCILE_INTERVAL_SECONDS="1",
        CAMFLOW_ENGINE__INTERVAL_SECONDS="0.3",
        # The most a log says: what an operator turns on when something is wrong.
        CAMFLOW_LOG_LEVEL="DEBUG",
        CAMFLOW_LOG_FORMAT=log_format,
        # The standard variables too, as an operator may set them for boto3.
        AWS_ACCESS_KEY_ID=access_key_id,
        AWS_SECRET_ACCESS_KEY=secret_access_key,
    )
    out, err = tmp_path / "serve.stdout", tmp_path / "serve.stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        serve = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "serve"],
            env=env,
            stdout=stdout,
            stderr=stderr,
            text=True,
        )
        try:
            wait_until_up(serve, base, timeout=90)
            camera_key = camflow(
                env, "keys", "create", "--tenant", "shop", "--role", "camera", "--camera", "door"
            )
            customer_key = camflow(env, "keys", "create", "--tenant", "shop", "--role", "customer")
            customer = {"Authorization": f"Bearer {customer_key}"}
            good = upload(base, camera_key, clips.face.read_bytes())
            upload(base, camera_key, clips.truncated.read_bytes())
            runs = _finished(base, customer, 2)
            assert sorted(r["status"] for r in runs) == ["failed", "succeeded"], runs
            for run in runs:
                clip = run["clip_id"]
                assert httpx.get(f"{base}/v1/clips/{clip}/results", headers=customer).is_success
                assert httpx.get(f"{base}/v1/clips/{clip}/artifacts", headers=customer).is_success
            # A wrong key, a close one: its text must not be logged either.
            wrong_key = customer_key[:-6] + "wrong1"
            refused = httpx.get(f"{base}/v1/runs", headers={"Authorization": f"Bearer {wrong_key}"})
            assert refused.status_code == 401
            dashboard_secrets = _use_the_dashboard(base, customer_key)
        finally:
            serve.send_signal(signal.SIGINT)
            try:
                serve.wait(timeout=60)
            except subprocess.TimeoutExpired:
                serve.kill()

    known = {
        "S3 access key id": access_key_id,
        "S3 secret access key": secret_access_key,
        "database password": db_password,
        "camera API key's secret": camera_key.split("_", 2)[2],
        "customer API key's secret": customer_key.split("_", 2)[2],
        "a wrong API key's secret": wrong_key.split("_", 2)[2],
        "dashboard session id": dashboard_secrets[0],
        "sign-in CSRF token": dashboard_secrets[1],
        "sign-out CSRF token": dashboard_secrets[2],
    }
    assert issued_keys, "stages were given no credentials of their own: nothing to look for"
    for n, (_, secret) in enumerate(issued_keys):
        known[f"stage credentials {n}: secret"] = secret
    assert all(len(value) >= 16 for value in known.values()), known

    # What was written: files under home, serve's output, the results bucket, the store.
    searched: dict[str, bytes] = {f"serve {p.name}": p.read_bytes() for p in (out, err)}
    handoffs: dict[str, bytes] = {}
    for path in _files(home):
        where = str(path.relative_to(home))
        (handoffs if _is_handoff(path) else searched)[where] = path.read_bytes()
    # A batch's stage process reads its clips' credentials from these files: owner-only,
    # and holding the stages' own credentials only, never the orchestrator's.
    assert handoffs, "no batch ran: the faces pipeline batches its stages"
    for where in handoffs:
        assert (home / where).stat().st_mode & 0o077 == 0, where
    stages_own = {f"stage credentials {n}: secret" for n in range(len(issued_keys))}
    in_handoffs = [
        f"{what} in {where}"
        for what, value in known.items()
        for where, content in handoffs.items()
        if what not in stages_own and value.encode() in content
    ]
    assert in_handoffs == [], in_handoffs
    reader = S3Gateway(
        S3Access(s3_server.endpoint_url, "us-east-1", access_key_id, secret_access_key)
    )
    listed = reader.client.list_objects_v2(Bucket=results).get("Contents", [])
    for item in listed:
        body = reader.client.get_object(Bucket=results, Key=item["Key"])["Body"].read()
        searched[f"s3://{results}/{item['Key']}"] = body
    engine = create_engine(password_url)
    try:
        with engine.connect() as connection:
            for table in ("runs", "stage_attempts"):
                rows = connection.execute(text(f"SELECT * FROM {table}")).all()
                searched[f"store: {table}"] = repr(rows).encode()
    finally:
        engine.dispose()

    assert any(name.endswith("result.json") for name in searched), sorted(searched)
    assert any("stderr" in name for name in searched if not name.startswith("serve")), sorted(
        searched
    )
    assert good.startswith("shop/door/")
    found = [
        f"{what} in {where}: …{_around(content, value)}…"
        for what, value in known.items()
        for where, content in searched.items()
        if value.encode() in content
    ]
    assert found == [], "\n".join(found)
    assert serve.returncode == 0, err.read_text()[-2000:]
