"""Least privilege for stages: each execution holds credentials for its own clip and
outputs only, enforced by the embedded S3 (IAM on, as S3 does), never the orchestrator's."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from orchestrator.domain.layout import upload_key
from orchestrator.embedded_auth import presigned_problem
from orchestrator.grants.brokers import IamUserBroker
from orchestrator.grants.policy import GRACE_SECONDS, Grant, grant_for, policy_document
from orchestrator.service import Runtime, drive, open_runtime
from orchestrator.settings import PROJECT_ROOT, Settings
from orchestrator.store.models import RunStatus

STAGES = PROJECT_ROOT / "tests" / "stages"


@pytest.fixture
def enforced(settings: Settings, tmp_path: Path) -> Settings:
    """The embedded default: an embedded S3 of camflow's own, enforcing IAM."""
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    ingest, results = settings.s3.ingest_bucket, settings.s3.results_bucket
    (pipelines / "hostile.yaml").write_text(
        "name: hostile\n"
        "trigger: {prefix: hostile/, suffix: .mp4}\n"
        "stages:\n"
        "  - name: hostile\n"
        "    algorithm: hostile@1.0.0\n"
        "    inputs: {video: clip}\n"
        f"    params: {{victim_clip: {ingest}/victim/cam/2026/01/01/000000.mp4,"
        f" victim_result: {results}/victim/cam/c-0000000000000000/p/result.json}}\n"
    )
    return settings.model_copy(
        update={
            "s3": settings.s3.model_copy(
                update={
                    "embedded": True,
                    "endpoint_url": None,
                    "access_key_id": None,
                    "secret_access_key": None,
                }
            ),
            "algorithm_dirs": [STAGES],
            "pipeline_dirs": [pipelines],
        }
    )


def _admin_client(runtime: Runtime, service: str = "s3") -> object:
    return runtime.s3.access.client(service, boto3.session.Config())  # type: ignore[attr-defined]


def test_a_hostile_stage_gets_only_its_own_clip(enforced: Settings) -> None:
    with open_runtime(enforced) as runtime:
        assert runtime.embedded is not None and runtime.embedded.enforce
        s3, ingest = runtime.s3.client, enforced.s3.ingest_bucket
        victim_result = "victim/cam/c-0000000000000000/p/result.json"
        s3.put_object(Bucket=ingest, Key="victim/cam/2026/01/01/000000.mp4", Body=b"private")
        s3.put_object(Bucket=enforced.s3.results_bucket, Key=victim_result, Body=b'{"ok": 1}')
        key = upload_key("hostile", "cam", datetime.now(UTC))
        s3.put_object(Bucket=ingest, Key=key, Body=b"mine")
        assert runtime.watcher.tick() >= 1
        runtime.reconciler.plan_new_clips()
        [(run, _clip)] = runtime.store.list_runs(pipeline="hostile")
        drive(runtime, [run.id], timeout=60, interval=0.1)
        run = runtime.store.get_run(run.id)
        assert run.status == RunStatus.SUCCEEDED, run.error
        body = (
            s3.get_object(Bucket=enforced.s3.results_bucket, Key=run.result["hostile"]["result"])[
                "Body"
            ].read()
            if "result" in (run.result.get("hostile") or {})
            else None
        )
        tries = _tries(runtime, run.id) if body is None else json.loads(body)
        assert tries["tries"] == {
            "list the buckets": "AccessDenied",
            "list the ingest bucket": "AccessDenied",
            "read another tenant's clip": "AccessDenied",
            "overwrite another run's result": "AccessDenied",
            "delete its own clip": "AccessDenied",
            "write outside its output prefix": "AccessDenied",
            "read its own clip": "allowed",
        }
        # Not the orchestrator's key, and gone once the stage ended.
        assert tries["access_key_id"] != runtime.s3.access.access_key_id
        stage = boto3.client(
            "s3",
            endpoint_url=runtime.embedded.endpoint_url,
            region_name=enforced.s3.region,
            aws_access_key_id=tries["access_key_id"],
            aws_secret_access_key="whatever",
        )
        runtime.executor.poll([])  # reaps the finished process, revoking its key
        with pytest.raises(ClientError) as gone:
            stage.get_object(Bucket=ingest, Key=key)
        assert gone.value.response["Error"]["Code"] == "InvalidAccessKeyId"
        assert (
            s3.get_object(Bucket=enforced.s3.results_bucket, Key=victim_result)["Body"].read()
            == b'{"ok": 1}'
        )


def _tries(runtime: Runtime, run_id: str) -> dict:  # type: ignore[type-arg]
    run = runtime.store.get_run(run_id)
    clip = runtime.store.find_clip(run.clip_id)
    prefix = f"{clip.tenant}/{clip.camera}/{clip.id}/{run.pipeline}/hostile/result.json"
    body = runtime.s3.client.get_object(Bucket=runtime.settings.s3.results_bucket, Key=prefix)
    return json.loads(body["Body"].read())


def test_anonymous_and_forged_requests_are_refused(enforced: Settings) -> None:
    with open_runtime(enforced) as runtime:
        assert runtime.embedded is not None
        s3, ingest = runtime.s3.client, enforced.s3.ingest_bucket
        s3.put_object(Bucket=ingest, Key="t/cam/a.mp4", Body=b"a")
        import httpx

        anonymous = httpx.get(f"{runtime.embedded.endpoint_url}/{ingest}/t/cam/a.mp4")
        assert anonymous.status_code == 403
        url = s3.generate_presigned_url(
            "get_object", Params={"Bucket": ingest, "Key": "t/cam/a.mp4"}, ExpiresIn=60
        )
        assert httpx.get(url).content == b"a"
        # The same signature for another key does not pass.
        forged = url.replace("t/cam/a.mp4", "t/cam/b.mp4")
        assert httpx.get(forged).status_code == 403
        stranger = boto3.client(
            "s3",
            endpoint_url=runtime.embedded.endpoint_url,
            region_name=enforced.s3.region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        with pytest.raises(ClientError):
            stranger.list_buckets()


def test_an_expired_presigned_url_is_refused() -> None:
    stamp = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y%m%dT%H%M%SZ")
    environ = {
        "REQUEST_METHOD": "GET",
        "QUERY_STRING": (
            "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F20260101%2Fus-east-1%2Fs3"
            f"%2Faws4_request&X-Amz-Date={stamp}&X-Amz-Expires=60&X-Amz-SignedHeaders=host"
            "&X-Amz-Signature=00"
        ),
    }
    assert presigned_problem(environ, "AK", datetime.now(UTC)) == "the presigned URL has expired"
    assert "only the orchestrator" in (presigned_problem(environ, "other", datetime.now(UTC)) or "")


def test_the_grant_is_the_clip_its_inputs_and_its_output_prefix() -> None:
    from orchestrator.domain.algorithm import Resources
    from orchestrator.executors.base import StageLaunch

    def launch(n: int) -> StageLaunch:
        out = f"s3://res/t/cam/c-{n}/faces/detect/"
        return StageLaunch(
            attempt_id=f"r-{n}-detect-1",
            run_id=f"r-{n}",
            stage="detect",
            pipeline="faces",
            tenant="t",
            clip_id=f"c-{n}",
            algorithm="faces@1.0.0",
            image="img",
            command=["x"],
            env={
                "CAMFLOW_INPUTS": json.dumps(
                    {
                        "video": f"s3://in/t/cam/{n}.mp4",
                        "frames": f"s3://res/t/cam/c-{n}/faces/decode/",
                    }
                ),
                "CAMFLOW_OUTPUT": out,
            },
            accelerator="cpu",
            resources=Resources(cpu="1", memory="1Gi"),
            timeout_seconds=300,
        )

    grant = grant_for([launch(1), launch(2)])
    # One process takes the two clips one after the other: it may need both timeouts.
    assert grant.seconds == 300 + 300 + GRACE_SECONDS
    assert grant.reads == ["in/t/cam/1.mp4", "in/t/cam/2.mp4"]
    assert grant.read_prefixes == ["res/t/cam/c-1/faces/decode/", "res/t/cam/c-2/faces/decode/"]
    assert grant.write_prefixes == ["res/t/cam/c-1/faces/detect/", "res/t/cam/c-2/faces/detect/"]
    document = policy_document(grant)
    actions = {a for s in document["Statement"] for a in s["Action"]}
    assert actions == {"s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"}
    resources = [r for s in document["Statement"] for r in s["Resource"]]
    assert "arn:aws:s3:::in/t/cam/1.mp4" in resources  # exact: no wildcard on the clip
    assert "arn:aws:s3:::res/t/cam/c-1/faces/detect/*" in resources


def test_the_sweep_ends_expired_credentials(enforced: Settings) -> None:
    with open_runtime(enforced) as runtime:
        broker = runtime.broker
        assert isinstance(broker, IamUserBroker)
        grant = Grant(
            reads=["b/k"], read_prefixes=[], write_prefixes=["b/o/"], seconds=1, label="a"
        )
        credentials = broker.issue(grant)
        iam = runtime.s3.access.client("iam", boto3.session.Config())
        # (moto's IAM is one per process: other tests' users may be swept here too.)
        broker.sweep(datetime.now(UTC))
        iam.get_user(UserName=credentials.handle)  # not yet expired: kept
        assert broker.sweep(datetime.now(UTC) + timedelta(seconds=5)) >= 1
        with pytest.raises(ClientError):
            iam.get_user(UserName=credentials.handle)


def test_on_aws_without_a_stage_role_camflow_says_what_to_set(settings: Settings) -> None:
    from orchestrator.errors import ConfigError
    from orchestrator.grants.choice import broker_for
    from orchestrator.storage import S3Access

    aws = settings.model_copy(
        update={"s3": settings.s3.model_copy(update={"stage_credentials": "auto"})}
    )
    with pytest.raises(ConfigError, match=r"s3.stage_role_arn: .*CAMFLOW_S3__STAGE_ROLE_ARN"):
        broker_for(aws, S3Access(None, "us-east-1", "AKIA", "secret"))


def test_on_aws_a_session_with_the_grant_as_its_policy(settings: Settings) -> None:
    """STS's side (moto answers AssumeRole; it ignores session policies, so what is
    checked here is what camflow asks for: the enforcing test above proves the policy)."""
    from orchestrator.grants.brokers import AssumeRoleBroker

    access = settings.model_copy().s3
    kwargs = {
        "endpoint_url": access.endpoint_url,
        "region_name": access.region,
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }
    role = boto3.client("iam", **kwargs).create_role(
        RoleName=f"camflow-stage-{access.ingest_bucket}",
        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
    )["Role"]["Arn"]
    asked: list[dict] = []  # type: ignore[type-arg]
    sts = boto3.client("sts", **kwargs)
    sts.meta.events.register(
        "provide-client-params.sts.AssumeRole", lambda params, **_: asked.append(params)
    )
    grant = Grant(reads=["b/k"], read_prefixes=[], write_prefixes=["b/o/"], seconds=60, label="a-1")
    credentials = AssumeRoleBroker(sts, role).issue(grant)
    assert credentials.session_token and credentials.access_key_id.startswith("ASIA")
    [params] = asked
    assert json.loads(params["Policy"]) == policy_document(grant)
    assert params["DurationSeconds"] == 900  # STS's floor: shorter grants still get 15 min
    assert credentials.env()["AWS_SESSION_TOKEN"] == credentials.session_token


def test_a_jobs_credentials_last_for_every_clip_and_every_retry() -> None:
    from orchestrator.kube.jobs import busy_seconds

    pod = {"activeDeadlineSeconds": 60}
    indexed = {"spec": {"completions": 3, "backoffLimitPerIndex": 2, "template": {"spec": pod}}}
    lone = {"spec": {"backoffLimit": 1, "template": {"spec": pod}}}
    assert busy_seconds(indexed) == 60 * 3 * 3
    assert busy_seconds(lone) == 60 * 2


class _IamAway:
    """A broker whose IAM cannot be reached."""

    def issue(self, grant: Grant) -> None:
        from orchestrator.errors import StorageError

        raise StorageError("cannot mint stage credentials: IAM is away")

    def revoke(self, credentials: object) -> None:
        return None

    def sweep(self, now: datetime | None = None) -> int:
        return 0


def test_a_failed_mint_claims_nothing_so_a_retry_starts_it_for_real(tmp_path: Path) -> None:
    """Minted before the claim: a claim without a process would be adopted by the next
    submit and found lost later, costing the attempt a retry."""
    from orchestrator.domain.algorithm import Resources
    from orchestrator.errors import ExecutorError
    from orchestrator.executors import local_runner
    from orchestrator.executors.base import StageLaunch
    from orchestrator.executors.local import LocalExecutor

    root = tmp_path / "attempts"
    lone = StageLaunch(
        attempt_id="r-1-s-1",
        run_id="r-1",
        stage="s",
        pipeline="p",
        tenant="t",
        clip_id="c-1",
        algorithm="x@1.0.0",
        image="x",
        command=["true"],
        env={"CAMFLOW_INPUTS": '{"video": "s3://in/t/c/a.mp4"}', "CAMFLOW_OUTPUT": "s3://r/t/o/"},
        accelerator="cpu",
        resources=Resources(cpu="1", memory="1Gi"),
        timeout_seconds=30,
    )
    batched = lone.model_copy(update={"attempt_id": "r-2-s-1", "run_id": "r-2", "batch": "b-1"})
    executor = LocalExecutor(root, broker=_IamAway())  # type: ignore[arg-type]
    for launch in (lone, batched):
        with pytest.raises(ExecutorError, match="IAM is away"):
            executor.submit([launch])
    assert not list(root.rglob(local_runner.LAUNCH))


def test_an_iam_endpoint_out_of_reach_is_a_storage_error() -> None:
    from botocore.config import Config

    from orchestrator.errors import StorageError

    iam = boto3.client(
        "iam",
        endpoint_url="http://127.0.0.1:9",
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="y",
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=1),
    )
    grant = Grant(reads=["b/k"], read_prefixes=[], write_prefixes=["b/o/"], seconds=1, label="a")
    with pytest.raises(StorageError, match="cannot mint stage credentials for a"):
        IamUserBroker(iam).issue(grant)
