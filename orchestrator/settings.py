"""Typed, grouped settings from a YAML file and ``CAMFLOW_*`` environment variables.

Precedence: explicit overrides > environment > config file > defaults. Nested fields
use a double underscore: ``CAMFLOW_STORE__URL``, ``CAMFLOW_LOCAL__MAX_PARALLEL``.
The config file is ``--config``, else ``$CAMFLOW_CONFIG``, else ``./camflow.yaml`` if
present.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class _Group(BaseModel):
    # A misspelt key in a config file is an error, not a silently ignored line.
    model_config = ConfigDict(extra="forbid")


class S3Settings(_Group):
    #: None: use $AWS_ENDPOINT_URL, else AWS itself; with ``embedded`` a local moto server.
    endpoint_url: str | None = None
    #: The embedded S3 (moto in camflow's process). "auto": when no endpoint is set and
    #: boto3's credential chain finds nothing at all; true: always; false: never.
    embedded: bool | Literal["auto"] = "auto"
    #: Where `camflow serve`'s embedded S3 listens (127.0.0.1); fixed, so presigned URLs
    #: outlive a restart. 0: any free port.
    embedded_port: int = Field(default=9440, ge=0, le=65535)
    region: str = "us-east-1"
    ingest_bucket: str = "camflow-ingest"
    results_bucket: str = "camflow-results"
    #: Usually left unset: boto3 reads the standard AWS variables and files itself.
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    #: How each stage process gets credentials for its own clip and outputs only (the
    #: orchestrator's keys never reach a stage). "assume-role": STS AssumeRole on
    #: ``stage_role_arn`` with a session policy per execution (AWS). "iam-user": an IAM
    #: user per execution, deleted when it ends (the embedded S3, and S3s with the IAM
    #: API). "auto": assume-role on AWS, iam-user with an endpoint or the embedded S3.
    stage_credentials: Literal["auto", "assume-role", "iam-user"] = "auto"
    #: The role stages' sessions assume (its own policy bounds every session's).
    stage_role_arn: str | None = None
    #: The longest session STS may give (the role's MaxSessionDuration, 1 h unless
    #: raised, up to 12 h): a batch that may run longer needs both raised.
    stage_session_max_seconds: int = Field(default=3600, ge=900, le=43200)

    @model_validator(mode="after")
    def _one_s3(self) -> S3Settings:
        if self.embedded is True and self.endpoint_url:
            raise ValueError("embedded: true and an endpoint_url name two different S3s")
        return self


class StoreSettings(_Group):
    #: Any SQLAlchemy URL; default: SQLite file ``<home>/camflow.db``.
    url: str | None = None
    #: A file that holds the URL (a mounted Secret), so that its password is in no
    #: environment variable; read once, when the settings load.
    url_file: Path | None = None

    @model_validator(mode="after")
    def _url_from_file(self) -> StoreSettings:
        if self.url_file is None:
            return self
        if self.url is not None:
            raise ValueError("url and url_file both name the store: give one")
        try:
            self.url = self.url_file.read_text().strip() or None
        except OSError as exc:
            raise ValueError(f"url_file {self.url_file} cannot be read: {exc.strerror}") from exc
        if self.url is None:
            raise ValueError(f"url_file {self.url_file} is empty")
        return self


class WatcherSettings(_Group):
    """Discovery: S3 event notifications through SQS first, a reconciliation sweep of
    the buckets as the safety net (lost messages, no notifications, outages)."""

    #: The SQS queue (URL or name) the buckets' ObjectCreated notifications go to.
    #: Unset: no fast path, the sweep alone finds clips (the embedded S3 always has one).
    queue: str | None = None
    #: camflow creates the queue and points the buckets' notifications at it (merging
    #: with their other notification entries). Unset: only on the embedded S3.
    configure_notifications: bool | None = None
    #: Long-poll length of each receive: an idle queue costs one request this often.
    wait_seconds: int = Field(default=10, ge=0, le=20)
    #: How often the sweep runs, and how many LIST pages one pass may spend; a pass
    #: that runs out of pages resumes at its cursor the next time.
    reconcile_interval_seconds: PositiveFloat = 60
    reconcile_pages: PositiveInt = 100
    page_size: PositiveInt = Field(default=1000, le=1000)


class LeaderSettings(_Group):
    """Leadership among `camflow serve` replicas on one store: the leader discovers
    and runs the engine, the others serve the API and stand by."""

    #: A leader that stops renewing is replaced after this long.
    lease_seconds: PositiveFloat = 15
    #: How often the leader renews (and a follower tries to take over).
    renew_seconds: PositiveFloat = 5


class EngineSettings(_Group):
    interval_seconds: PositiveFloat = 1
    retry_backoff_seconds: float = Field(default=5, ge=0)
    retry_backoff_max_seconds: float = Field(default=300, ge=0)
    #: The largest `result` output and `_manifest.json` a stage may write; larger ones
    #: fail the attempt unread (the result goes into result.json and the store).
    max_result_bytes: PositiveInt = 16 * 2**20
    max_manifest_bytes: PositiveInt = 2**20
    #: A run whose handling raises unexpectedly this many ticks in a row is failed
    #: with the error, rather than retried forever.
    max_erroring_ticks: PositiveInt = 10
    #: Ready attempts of one stage (same algorithm version, params and accelerator) run
    #: together in one process, up to this many clips, where the algorithm takes
    #: batches and the executor runs them (local). A pipeline stage may override it.
    batch_max_size: PositiveInt = 8
    #: How long a ready attempt may wait for others to fill its batch (0: batch only
    #: what is ready at the same tick; it never delays a lone clip).
    batch_max_wait_seconds: float = Field(default=0, ge=0)
    #: Consecutive stages of a clip with the same placement run in one process (fused),
    #: where the executor can and the stages allow (SDK stages; `fuse: false` in the
    #: pipeline keeps a stage apart); intermediates then stay in that process.
    fuse_stages: bool = True


class LocalExecutorSettings(_Group):
    max_parallel: PositiveInt = 2
    #: GPUs this machine offers to stages (0: GPU stages fall back to CPU or fail).
    gpus: int = Field(default=0, ge=0)
    #: Seconds between SIGTERM and SIGKILL when a stage overruns its timeout.
    kill_grace_seconds: float = Field(default=5, ge=0)
    #: A batch process (a stage that takes batches) stays this long after its last
    #: clip, warm, and takes the next clips of the same stage without starting again
    #: (interpreter, imports, model). 0: each batch is a process of its own.
    batch_linger_seconds: float = Field(default=2, ge=0)
    #: Keeps one stage process started ahead, idle with its interpreter and the common
    #: imports (numpy, OpenCV, onnxruntime, boto3) done, for the next batch of an SDK
    #: stage on CPU: that batch starts about 0.4 s sooner. It is started again once the
    #: machine is idle. False: each batch process starts from nothing.
    spare_process: bool = True


class GpuNodes(_Group):
    """How a cluster's GPU nodes are found and what they are tainted with."""

    node_selector: dict[str, str] = Field(
        default_factory=lambda: {"nvidia.com/gpu.present": "true"}
    )
    taint_key: str = "nvidia.com/gpu"
    taint_effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = "NoSchedule"
    resource: str = "nvidia.com/gpu"
    #: GPU Jobs this cluster runs at once.
    slots: int = Field(default=1, ge=0)


class PodPeer(_Group):
    """Pods a stage may reach in the cluster (an in-cluster S3 such as MinIO), by their
    namespace and labels: a NetworkPolicy sees pod addresses, never a Service's."""

    namespace: str = Field(min_length=1)
    labels: dict[str, str] = Field(min_length=1)


class StageEgress(_Group):
    """Where a cluster's stage pods may connect besides DNS: S3 as the pods reach it.
    `camflow egress-policy` renders it into the camflow-stage NetworkPolicy. Restrict
    the buckets themselves with the VPC endpoint's policy: a NetworkPolicy sees only
    addresses, and every bucket of a region shares them."""

    #: S3's addresses as pods reach them: an interface VPC endpoint's subnets or ENIs
    #: (with private DNS, ``s3.<region>.amazonaws.com`` resolves to them).
    cidrs: list[IPvAnyNetwork] = Field(default_factory=list)
    #: Prefix lists (``pl-…`` or a name such as ``com.amazonaws.us-east-1.s3``, a
    #: gateway endpoint's): resolved into their CIDRs, with the EC2 API, when rendered.
    prefix_lists: list[str] = Field(default_factory=list)
    #: An S3 inside the cluster, by its pods.
    pods: list[PodPeer] = Field(default_factory=list)
    ports: list[int] = Field(default_factory=lambda: [443], min_length=1)

    @model_validator(mode="after")
    def _somewhere(self) -> StageEgress:
        if not (self.cidrs or self.prefix_lists or self.pods):
            raise ValueError(
                "names no destination: give S3's cidrs, prefix_lists or pods (or leave "
                "stage_egress out)"
            )
        everything = [str(c) for c in self.cidrs if c.prefixlen == 0]
        if everything:
            raise ValueError(
                f"{everything[0]} is every address: name the S3 endpoint's (a VPC "
                "endpoint's subnets or prefix list)"
            )
        for port in self.ports:
            if not 0 < port < 65536:
                raise ValueError(f"port {port} is not a TCP port")
        return self


class ClusterSettings(_Group):
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,39}$")
    #: dev clusters run algorithm versions on the dev channel; prod runs stable ones.
    environment: Literal["dev", "prod"]
    kubeconfig: Path | None = None
    context: str | None = None
    in_cluster: bool = False
    namespace: str = "camflow-jobs"
    #: Stage Jobs this cluster runs at once.
    budget: PositiveInt = 10
    gpu: GpuNodes | None = None
    #: The S3 endpoint as pods see it (unset: AWS).
    s3_endpoint: str | None = None
    #: Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (unset: the service
    #: account's cloud identity, e.g. IRSA).
    s3_secret: str | None = "camflow-s3"
    s3_region: str = "us-east-1"
    service_account: str = "camflow-stage"
    priority_class: str = "camflow-stage"
    ttl_seconds_after_finished: int = Field(default=3600, ge=0)
    scratch_size: str = "10Gi"
    request_timeout_seconds: PositiveFloat = 10
    #: A cluster that stopped answering is asked again this often, whether or not
    #: anything runs there, and takes work again once it answers.
    probe_interval_seconds: PositiveFloat = 10
    #: How long a pod may wait on an image that cannot be pulled, or on a container
    #: that cannot be created (a missing Secret), before its attempt fails.
    stuck_grace_seconds: float = Field(default=60, ge=0)
    #: Where stage pods may connect besides DNS (S3), for its NetworkPolicy.
    stage_egress: StageEgress | None = None


class ApiSettings(_Group):
    #: Serve the HTTP API from `camflow serve`.
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    upload_url_seconds: int = Field(default=300, ge=30, le=3600)
    #: The largest clip a camera may upload: the presigned POST's content-length-range.
    upload_max_bytes: PositiveInt = 512 * 1024 * 1024
    download_url_seconds: int = Field(default=900, ge=30, le=86400)
    events_poll_seconds: PositiveFloat = 1.0
    #: An idle event stream sends a comment this often, so that proxies (whose idle
    #: timeouts are often 60 s) keep the connection.
    events_keepalive_seconds: PositiveFloat = 15.0
    #: /readyz fails when the engine has not finished a tick for this long.
    ready_max_age_seconds: PositiveFloat = 60
    #: How long a dashboard sign-in lasts.
    session_seconds: int = Field(default=12 * 3600, ge=60, le=30 * 86400)
    #: Mark the dashboard's cookies Secure even on plain HTTP requests: for TLS that
    #: ends at a proxy which does not send X-Forwarded-Proto (HTTPS requests always are).
    secure_cookies: bool = False


class KubernetesSettings(_Group):
    clusters: list[ClusterSettings] = Field(default_factory=list)


class WebhookSettings(_Group):
    """Signed webhooks to tenants' endpoints (orchestrator.webhooks)."""

    #: Networks an endpoint may reach although they are not public (loopback,
    #: link-local, private: the cluster's own): an operator's choice, never a tenant's.
    allowed_networks: list[IPvAnyNetwork] = Field(default_factory=list)
    #: More networks no endpoint may reach, besides every non-public one: the
    #: cluster's pod and service ranges where they are public addresses.
    blocked_networks: list[IPvAnyNetwork] = Field(default_factory=list)
    #: A delivery that keeps failing is retried for this long, then listed for replay.
    retry_horizon_seconds: PositiveFloat = 86_400
    #: The first retry's delay, doubling per attempt up to the maximum (with jitter).
    retry_base_seconds: PositiveFloat = 5
    retry_max_seconds: PositiveFloat = 3_600
    #: Each step of a request (connect, send, each read of the answer), and how many
    #: requests go out at once from each replica.
    timeout_seconds: PositiveFloat = 10
    concurrency: PositiveInt = 8
    #: How often each replica looks for deliveries that are due.
    interval_seconds: PositiveFloat = 2
    #: Delivered deliveries are kept this long (to list, or to replay), then deleted;
    #: failed ones stay until replayed or their endpoint is removed.
    keep_delivered_days: PositiveFloat = 7


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CAMFLOW_", env_nested_delimiter="__", extra="forbid"
    )

    home: Path = Field(default_factory=lambda: Path.home() / ".camflow")
    log_level: str = "INFO"
    #: "json": one object per line (time, level, logger, message, and clip, run, stage
    #: and attempt where a line is about one) for log pipelines; "text" for people.
    log_format: Literal["text", "json"] = "text"
    s3: S3Settings = Field(default_factory=S3Settings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    watcher: WatcherSettings = Field(default_factory=WatcherSettings)
    leader: LeaderSettings = Field(default_factory=LeaderSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    local: LocalExecutorSettings = Field(default_factory=LocalExecutorSettings)
    #: Where stages run: local processes, or Jobs on the configured clusters.
    executor: Literal["local", "kubernetes"] = "local"
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    algorithm_dirs: list[Path] = Field(default_factory=lambda: [PROJECT_ROOT / "algorithms"])
    pipeline_dirs: list[Path] = Field(default_factory=lambda: [PROJECT_ROOT / "pipelines"])

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file comes from ``yaml_file`` in model_config, set by load_settings.
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls))

    @property
    def store_url(self) -> str:
        return self.store.url or f"sqlite:///{self.home / 'camflow.db'}"

    @property
    def store_url_shown(self) -> str:
        """The store's URL for logs and messages: its password, if any, masked."""
        from sqlalchemy.engine import make_url

        return make_url(self.store_url).render_as_string(hide_password=True)

    @property
    def s3_endpoint(self) -> str | None:
        return self.s3.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None


def default_config_file() -> Path | None:
    named = os.environ.get("CAMFLOW_CONFIG")
    if named:
        return Path(named)
    local = Path("camflow.yaml")
    return local if local.is_file() else None


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Settings from ``config`` (or the default file), the environment and overrides."""
    from pydantic import ValidationError

    from orchestrator.errors import ConfigError

    path = config or default_config_file()
    if path is not None and not path.is_file():
        raise ConfigError(str(path), "", "config file not found")

    class FileSettings(Settings):
        model_config = SettingsConfigDict(**{**Settings.model_config, "yaml_file": path})

    try:
        return FileSettings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise ConfigError(str(path or "environment"), field, first["msg"]) from exc
