"""Tenancy of pipelines and algorithms: a pipeline runs on a clip of tenant T only if
it serves T and every algorithm version it uses is T's own, the operator's or
published by an admin; otherwise the clip says why, in the store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from orchestrator.api.app import create_app
from orchestrator.api.keys import create_key
from orchestrator.cli import app as cli
from orchestrator.domain.catalog import Catalog, ConfigError, load_algorithm, parse_model
from orchestrator.domain.layout import clip_id, run_id, upload_key
from orchestrator.domain.pipeline import PipelineSpec
from orchestrator.engine.decide import tenancy
from orchestrator.engine.launches import image_reference
from orchestrator.registry import Registry, RegistryError, content_digest
from orchestrator.service import drive, open_runtime
from orchestrator.settings import PROJECT_ROOT, Settings
from orchestrator.store import Clip, Store
from orchestrator.store.models import Role, RunStatus

PROBE = PROJECT_ROOT / "tests" / "stages" / "probe"
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
DIGEST = "sha256:" + "d" * 64


def _spec(tenants: Any = None, algorithm: str = "probe@1.0.0", name: str = "p") -> PipelineSpec:
    data: dict[str, Any] = {
        "name": name,
        "stages": [
            {"name": "probe", "algorithm": algorithm, "inputs": {}, "params": {"mode": "ok"}}
        ],
    }
    if tenants is not None:
        data["tenants"] = tenants
    return parse_model(PipelineSpec, data, f"{name}.yaml")


def _catalog(owner: str | None = None, published: bool = False) -> Catalog:
    """The operator's probe@1.0.0, and authored@1.0.0 of ``owner``."""
    catalog = Catalog()
    manifest = load_algorithm(PROBE / "algorithm.yaml")
    catalog.add_algorithm(manifest, "probe")
    authored = manifest.model_copy(update={"name": "authored"})
    catalog.add_algorithm(authored, "authored", owner=owner, published=published)
    return catalog


def _clip(tenant: str) -> Clip:
    key = upload_key(tenant, "door", NOW)
    return Clip(
        id=clip_id("b", key, "e"),
        bucket="b",
        key=key,
        etag="e",
        size=1,
        tenant=tenant,
        camera="door",
    )


# --- the pipeline's tenants -------------------------------------------------------------


def test_a_pipeline_serves_every_tenant_unless_it_names_them() -> None:
    assert _spec().tenants == "*" and _spec().serves("anyone")
    named = _spec(["shop", "acme", "shop"])
    assert named.tenants == ["acme", "shop"]
    assert named.serves("acme") and not named.serves("globex")


@pytest.mark.parametrize(
    ("tenants", "problem"),
    [
        ([], "is empty: the pipeline would serve no one"),
        (["acme", "*"], 'write `tenants: "*"`, not in a list'),
        (["acme/door"], "'acme/door' is not a tenant name"),
        ("everyone", "'everyone': write a list of tenant names ([acme, shop]), or \"*\""),
    ],
)
def test_a_bad_tenants_field_names_the_field_and_the_fix(tenants: Any, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        _spec(tenants)
    assert raised.value.field.startswith("tenants") and problem in str(raised.value)


def test_the_shipped_pipelines_serve_every_tenant() -> None:
    for path in sorted((PROJECT_ROOT / "pipelines").glob("*.yaml")):
        assert yaml.safe_load(path.read_text())["tenants"] == "*", path


# --- the decision -----------------------------------------------------------------------


def test_an_authors_algorithm_runs_only_on_its_own_tenants_clips_until_published() -> None:
    pipeline = _catalog(owner="acme").resolve(_spec(algorithm="authored@1.0.0"), "p.yaml")
    assert pipeline.refusal("acme") is None
    reason = pipeline.refusal("shop")
    assert reason == (
        "stage 'probe' of pipeline 'p' uses authored@1.0.0, which another tenant registered "
        "and an admin has not published: it runs only on its own tenant's clips (an admin "
        "publishes it with `camflow algorithms publish authored 1.0.0`)"
    )
    assert "acme" not in reason  # one tenant's name is not told to another
    published = _catalog(owner="acme", published=True)
    assert published.resolve(_spec(algorithm="authored@1.0.0"), "p.yaml").refusal("shop") is None
    # The operator's algorithms run for everyone.
    assert _catalog().resolve(_spec(), "p.yaml").refusal("shop") is None


def test_a_pipeline_that_does_not_serve_a_tenant_says_so_and_who_decides() -> None:
    pipeline = _catalog().resolve(_spec(["acme"]), "pipelines/p.yaml")
    assert pipeline.refusal("acme") is None
    assert pipeline.refusal("shop") == (
        "pipeline 'p' does not serve tenant 'shop': an admin adds the tenant to the "
        "`tenants` of pipelines/p.yaml"
    )


def test_tenancy_keeps_what_may_run_and_records_the_rest_with_reasons() -> None:
    catalog = _catalog(owner="acme")
    shared = catalog.resolve(_spec(name="shared"), "shared.yaml")
    scoped = catalog.resolve(_spec(["acme"], name="scoped"), "scoped.yaml")
    authored = catalog.resolve(_spec(algorithm="authored@1.0.0", name="authored"), "a.yaml")
    pipelines = [shared, scoped, authored]

    allowed, skipped = tenancy(_clip("acme"), pipelines, NOW)
    assert [p.name for p in allowed] == ["shared", "scoped", "authored"] and skipped == []

    clip = _clip("shop")
    allowed, skipped = tenancy(clip, pipelines, NOW)
    assert [p.name for p in allowed] == ["shared"]
    assert [(s.id, s.clip_id, s.pipeline, s.tenant, s.skipped_at) for s in skipped] == [
        (run_id(clip.id, "scoped"), clip.id, "scoped", "shop", NOW),
        (run_id(clip.id, "authored"), clip.id, "authored", "shop", NOW),
    ]
    assert "does not serve tenant 'shop'" in skipped[0].reason
    assert "has not published" in skipped[1].reason


# --- the registry -----------------------------------------------------------------------


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    store = Store(f"sqlite:///{tmp_path / 'camflow.db'}")
    yield Registry(store, clock=lambda: NOW)
    store.close()


def test_a_version_records_its_tenant_and_only_publishing_changes_who_runs_it(
    registry: Registry,
) -> None:
    manifest = load_algorithm(PROBE / "algorithm.yaml").model_copy(update={"name": "authored"})
    row, _ = registry.register_manifest(manifest, owner="acme")
    assert (row.owner, row.published) == ("acme", False)
    operator, _ = registry.register(PROBE)
    assert operator.owner is None  # the CLI's default: the operator's, for everyone
    spec = (_spec(algorithm="authored@1.0.0"), "p.yaml")
    before = registry.store.registry_stamp()
    assert registry.catalog([spec]).pipeline("p").refusal("shop") is not None

    published = registry.publish("authored", "1.0.0")
    assert published.published_at == NOW and published.owner == "acme"
    # The engine's cached catalog notices: the stamp moved.
    assert registry.store.registry_stamp() != before
    assert registry.catalog([spec]).pipeline("p").refusal("shop") is None
    with pytest.raises(Exception, match=r"authored@9\.9\.9 is not registered; authored has"):
        registry.publish("authored", "9.9.9")


def test_a_bad_tenant_name_is_refused_at_registration(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="'acme/x' is not a tenant name"):
        registry.register(PROBE, owner="acme/x")


# --- images pinned by digest, the per-accelerator ones too ---------------------------


def _faces_gpu(tmp_path: Path) -> Path:
    folder = tmp_path / "faces"
    folder.mkdir()
    data = yaml.safe_load((PROJECT_ROOT / "algorithms" / "faces" / "algorithm.yaml").read_text())
    assert data["accelerators"]["gpu"]["image"]  # faces has a CUDA image of its own
    (folder / "algorithm.yaml").write_text(yaml.safe_dump(data))
    return folder


def test_an_accelerators_own_image_is_pinned_by_its_registered_digest(
    registry: Registry, tmp_path: Path
) -> None:
    folder = _faces_gpu(tmp_path)
    default = "sha256:" + "c" * 64
    row, _ = registry.register(folder, default, image_digests={"gpu": DIGEST})
    assert row.image_digests == {"gpu": DIGEST}
    manifest = load_algorithm(folder / "algorithm.yaml")
    # Part of what a version is: the same version with another GPU digest is refused.
    assert row.content_digest != content_digest(manifest, default)
    with pytest.raises(RegistryError, match="already registered with different content"):
        registry.register(folder, default, image_digests={"gpu": "sha256:" + "e" * 64})
    spec = parse_model(
        PipelineSpec,
        {
            "name": "f",
            "stages": [{"name": "faces", "algorithm": "faces", "inputs": {"frames": "clip"}}],
        },
        "f.yaml",
    )
    stage = registry.catalog([(spec, "f.yaml")]).pipeline("f").stages["faces"]
    gpu, cpu = manifest.accelerators["gpu"], manifest.accelerators["cpu"]
    assert image_reference(stage, gpu, "gpu") == f"{gpu.image}@{DIGEST}"
    assert image_reference(stage, cpu, "cpu") == f"{manifest.image}@{default}"


@pytest.mark.parametrize(
    ("digests", "problem"),
    [
        ({"tpu": DIGEST}, "an image digest for 'tpu', which faces@1.2.0 does not support"),
        ({"cpu": DIGEST}, "has no image of its own for 'cpu'"),
        ({"gpu": "latest"}, "image digest 'latest' for gpu is not of the form sha256:"),
    ],
)
def test_a_digest_for_an_image_that_is_not_there_is_refused(
    registry: Registry, tmp_path: Path, digests: dict[str, str], problem: str
) -> None:
    with pytest.raises(RegistryError, match=problem):
        registry.register(_faces_gpu(tmp_path), image_digests=digests)


# --- the engine, two tenants, a real S3 ------------------------------------------------


def _pipeline_file(folder: Path, name: str, algorithm: str, tenants: Any) -> None:
    spec = {
        "name": name,
        "tenants": tenants,
        "trigger": {"prefix": "", "suffix": ".mp4"},
        "stages": [
            {
                "name": "probe",
                "algorithm": algorithm,
                "inputs": {"video": "clip"},
                "params": {"mode": "ok"},
            }
        ],
    }
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec))


@pytest.fixture
def two_tenants(settings: Settings, tmp_path: Path) -> Settings:
    """Three pipelines on every clip: the operator's probe for everyone, the same for
    acme only, and acme's own algorithm for everyone."""
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    _pipeline_file(pipelines, "shared", "probe@1.0.0", "*")
    _pipeline_file(pipelines, "acme-only", "probe@1.0.0", ["acme"])
    _pipeline_file(pipelines, "authored", "authored@1.0.0", "*")
    settings = settings.model_copy(
        update={"algorithm_dirs": [PROBE.parent], "pipeline_dirs": [pipelines]}
    )
    # acme's author registered `authored` (as the API does, with acme's key).
    store = Store(settings.store_url)
    manifest = load_algorithm(PROBE / "algorithm.yaml").model_copy(update={"name": "authored"})
    Registry(store).register_manifest(manifest, folder=PROBE, owner="acme")
    store.close()
    return settings


def _upload(runtime: Any, tenant: str, second: int) -> str:
    key = upload_key(tenant, "door", datetime(2026, 3, 1, 12, 0, second, tzinfo=UTC))
    runtime.s3.client.put_object(Bucket=runtime.settings.s3.ingest_bucket, Key=key, Body=b"x")
    return key


def test_each_tenants_clips_run_only_the_pipelines_they_may(two_tenants: Settings) -> None:
    with open_runtime(two_tenants) as runtime:
        _upload(runtime, "acme", 1)
        _upload(runtime, "shop", 2)
        assert runtime.watcher.tick() == 2
        runtime.reconciler.tick()

        runs = {(clip.tenant, run.pipeline): run for run, clip in runtime.store.list_runs()}
        assert sorted(runs) == [
            ("acme", "acme-only"),
            ("acme", "authored"),
            ("acme", "shared"),
            ("shop", "shared"),
        ]
        drive(runtime, [run.id for run in runs.values()], timeout=60, interval=0.1)
        for run in runs.values():
            assert runtime.store.get_run(run.id).status == RunStatus.SUCCEEDED

        # The shop clip is not silently left out of the others: each refusal is a row.
        skipped = {(row.tenant, row.pipeline): row for row in runtime.store.skipped_runs()}
        assert sorted(skipped) == [("shop", "acme-only"), ("shop", "authored")]
        assert "does not serve tenant 'shop'" in skipped["shop", "acme-only"].reason
        assert "authored@1.0.0, which another tenant registered" in (
            skipped["shop", "authored"].reason
        )
        # Planning again (a restart) adds nothing.
        shop_clip = skipped["shop", "authored"].clip_id
        runtime.store.plan(shop_clip, [], runtime.store.skipped_runs(clip_id=shop_clip))
        assert len(runtime.store.skipped_runs()) == 2

        # An admin publishes acme's algorithm: shop's next clip runs it too.
        runtime.registry.publish("authored", "1.0.0")
        _upload(runtime, "shop", 3)
        assert runtime.watcher.tick() == 1
        runtime.reconciler.tick()
        later = [
            run.pipeline
            for run, clip in runtime.store.list_runs()
            if clip.tenant == "shop" and clip.id != shop_clip
        ]
        assert sorted(later) == ["authored", "shared"]


def test_the_cli_publishes_and_lists_what_was_skipped(two_tenants: Settings) -> None:
    with open_runtime(two_tenants) as runtime:
        _upload(runtime, "shop", 1)
        runtime.watcher.tick()
        runtime.reconciler.plan_new_clips()
    config = two_tenants.home / "camflow.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        yaml.safe_dump(
            {
                "home": str(two_tenants.home),
                "store": {"url": two_tenants.store_url},
                "algorithm_dirs": [str(PROBE.parent)],
                "pipeline_dirs": [str(p) for p in two_tenants.pipeline_dirs],
            }
        )
    )
    runner = CliRunner()
    listed = runner.invoke(cli, ["--config", str(config), "skipped", "--json"])
    assert listed.exit_code == 0, listed.output
    assert sorted(item["pipeline"] for item in json.loads(listed.stdout)) == [
        "acme-only",
        "authored",
    ]
    shown = runner.invoke(cli, ["--config", str(config), "algorithms", "list"])
    assert "acme" in shown.stdout
    published = runner.invoke(
        cli, ["--config", str(config), "algorithms", "publish", "authored", "1.0.0", "--json"]
    )
    assert published.exit_code == 0, published.output
    body = json.loads(published.stdout)
    assert (body["tenant"], body["published"]) == ("acme", True)
    missing = runner.invoke(cli, ["--config", str(config), "algorithms", "publish", "nope", "1"])
    assert missing.exit_code == 1 and "nope@1 is not registered" in missing.output


# --- the API --------------------------------------------------------------------------


@pytest.fixture
def api(settings: Settings) -> Iterator[dict[str, Any]]:
    with open_runtime(settings) as runtime:
        keys = {}
        for name, tenant, role in [
            ("author_a", "tenant-a", Role.AUTHOR),
            ("author_b", "tenant-b", Role.AUTHOR),
            ("admin", "ops", Role.ADMIN),
        ]:
            _row, text = create_key(runtime.store, tenant, role)
            keys[name] = {"Authorization": f"Bearer {text}"}
        manifest = load_algorithm(PROBE / "algorithm.yaml").model_copy(update={"name": "a-own"})
        yield {"client": TestClient(create_app(runtime)), "keys": keys, "manifest": manifest}


def test_an_author_registers_for_its_own_tenant_only(api: dict[str, Any]) -> None:
    client, keys, manifest = api["client"], api["keys"], api["manifest"]
    body = {"manifest": manifest.model_dump(mode="json")}
    refused = client.post(
        "/v1/algorithms", headers=keys["author_a"], json={**body, "tenant": "tenant-b"}
    )
    assert refused.status_code == 403, refused.text
    assert "for its own tenant ('tenant-a') only, not 'tenant-b'" in refused.json()["detail"]
    made = client.post("/v1/algorithms", headers=keys["author_a"], json=body)
    assert made.status_code == 201, made.text
    assert (made.json()["tenant"], made.json()["published"]) == ("tenant-a", False)
    # An admin may register for a tenant.
    other = manifest.model_copy(update={"name": "b-own"}).model_dump(mode="json")
    by_admin = client.post(
        "/v1/algorithms", headers=keys["admin"], json={"manifest": other, "tenant": "tenant-b"}
    )
    assert by_admin.status_code == 201 and by_admin.json()["tenant"] == "tenant-b"


def test_only_an_admin_publishes_and_then_every_author_sees_it(api: dict[str, Any]) -> None:
    client, keys, manifest = api["client"], api["keys"], api["manifest"]
    client.post(
        "/v1/algorithms",
        headers=keys["author_a"],
        json={"manifest": manifest.model_dump(mode="json")},
    )
    path = f"/v1/algorithms/a-own/versions/{manifest.version}/publish"
    assert client.get("/v1/algorithms/a-own", headers=keys["author_b"]).status_code == 404
    for author in ("author_a", "author_b"):
        refused = client.post(path, headers=keys[author])
        assert refused.status_code == 403 and "needs a admin key" in refused.json()["detail"]
    missing = client.post("/v1/algorithms/nope/versions/1.0.0/publish", headers=keys["admin"])
    assert missing.status_code == 404
    published = client.post(path, headers=keys["admin"])
    assert published.status_code == 200, published.text
    assert published.json()["published"] is True and published.json()["published_at"]
    [seen] = client.get("/v1/algorithms/a-own", headers=keys["author_b"]).json()
    assert seen["tenant"] == "tenant-a" and seen["published"]
    # Seeing is not owning: B still cannot promote it.
    promote = f"/v1/algorithms/a-own/versions/{manifest.version}/promote"
    assert client.post(promote, headers=keys["author_b"]).status_code == 403


def test_the_cli_registers_for_a_tenant_with_each_images_digest(tmp_path: Path) -> None:
    folder = _faces_gpu(tmp_path)
    (folder / "algorithm.yaml").write_text(
        (folder / "algorithm.yaml").read_text().replace("name: faces", "name: acme-faces")
    )
    env = {"CAMFLOW_STORE__URL": f"sqlite:///{tmp_path / 'camflow.db'}"}
    args = ["algorithms", "register", str(folder), "--tenant", "acme", "--json"]
    done = CliRunner().invoke(
        cli, [*args, "--image-digest", DIGEST, "--image-digest", f"gpu={DIGEST}"], env=env
    )
    assert done.exit_code == 0, done.output
    body = json.loads(done.stdout)
    assert (body["tenant"], body["published"]) == ("acme", False)
    assert (body["image_digest"], body["image_digests"]) == (DIGEST, {"gpu": DIGEST})
    twice = CliRunner().invoke(
        cli, [*args, "--image-digest", DIGEST, "--image-digest", DIGEST], env=env
    )
    assert twice.exit_code == 1 and "two digests for the default image" in twice.output


def test_an_author_cannot_move_a_name_every_tenant_follows(api: dict[str, Any]) -> None:
    """Once an admin published a version, other tenants' pipelines follow the name's
    channels: an author's unpublished version registered or promoted there would stop
    their clips (each would be skipped). An admin still can, and a published version
    may be promoted."""
    client, keys, manifest = api["client"], api["keys"], api["manifest"]
    first = {"manifest": manifest.model_dump(mode="json")}
    assert client.post("/v1/algorithms", headers=keys["author_a"], json=first).status_code == 201
    publish = f"/v1/algorithms/a-own/versions/{manifest.version}/publish"
    assert client.post(publish, headers=keys["admin"]).status_code == 200
    later = manifest.model_copy(update={"version": "1.1.0"}).model_dump(mode="json")
    refused = client.post("/v1/algorithms", headers=keys["author_a"], json={"manifest": later})
    assert refused.status_code == 403, refused.text
    assert "other tenants' pipelines follow its channels" in refused.json()["detail"]
    by_admin = client.post(
        "/v1/algorithms", headers=keys["admin"], json={"manifest": later, "tenant": "tenant-a"}
    )
    assert by_admin.status_code == 201, by_admin.text
    promote = "/v1/algorithms/a-own/versions/1.1.0/promote"
    assert client.post(promote, headers=keys["author_a"]).status_code == 403
    assert client.post(publish.replace(manifest.version, "1.1.0"), headers=keys["admin"]).is_success
    assert client.post(promote, headers=keys["author_a"]).status_code == 200
