import itertools
from pathlib import Path

import pytest

from orchestrator.domain.algorithm import AlgorithmManifest
from orchestrator.domain.catalog import Catalog, load_catalog
from orchestrator.errors import ConfigError
from orchestrator.settings import PROJECT_ROOT

ALGORITHMS = PROJECT_ROOT / "algorithms"


def test_built_in_pipelines_and_algorithms_load() -> None:
    catalog = load_catalog([ALGORITHMS], [PROJECT_ROOT / "pipelines"])
    faces = catalog.pipeline("faces")
    assert list(faces.stages) == ["decode", "faces", "thumbnails", "publish"]
    # Defaults from each algorithm's parameter schema are filled in.
    assert faces.stages["faces"].params == {
        "threshold": 0.5,
        "nms_iou": 0.3,
        "max_side": 640,
        "gate_padding_seconds": 0.5,
        "refresh_seconds": 2.0,
    }
    assert faces.stages["faces"].algorithm.accelerators["gpu"].gpu == 1


def _pipeline(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "pipelines"
    folder.mkdir(exist_ok=True)
    (folder / "p.yaml").write_text(text)
    return folder


BASE = """
name: p
stages:
  - name: decode
    algorithm: decode
    inputs: {video: clip}
"""


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [
        (BASE.replace("name: p", "name: p\ncolour: red"), "colour", "not a known field"),
        (
            BASE + "    params: {fps: -1}\n",
            "stages[0].params.fps",
            "less than or equal to the minimum of 0",
        ),
        (BASE + "    params: {fpz: 1}\n", "stages[0].params", "'fpz' was unexpected"),
        (
            BASE.replace("algorithm: decode", "algorithm: decoder"),
            "stages[0].algorithm",
            "unknown algorithm 'decoder'",
        ),
        (
            BASE.replace("algorithm: decode", "algorithm: decode@9.9.9"),
            "stages[0].algorithm",
            "has no version '9.9.9'",
        ),
        (
            BASE.replace("{video: clip}", "{video: later}"),
            "stages[0].inputs",
            "unknown stage 'later'",
        ),
        (
            BASE.replace("{video: clip}", "{movie: clip}"),
            "stages[0].inputs",
            "needs inputs ['video']",
        ),
        (
            BASE + "    placement: {accelerator: gpu}\n",
            "stages[0].placement.accelerator",
            "supports only ['cpu']",
        ),
        (BASE.replace("name: decode", "name: Decode!"), "stages[0].name", "should match pattern"),
    ],
)
def test_a_bad_pipeline_is_refused_naming_file_field_and_problem(
    tmp_path: Path, text: str, field: str, problem: str
) -> None:
    folder = _pipeline(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_catalog([ALGORITHMS], [folder])
    error = caught.value
    assert error.source == str(folder / "p.yaml")
    assert error.field.startswith(field), error
    assert problem in error.problem, error
    assert str(folder / "p.yaml") in str(error)


def test_stages_must_come_after_what_they_need(tmp_path: Path) -> None:
    folder = _pipeline(
        tmp_path,
        """
name: p
stages:
  - {name: publish, algorithm: publish, inputs: {video: decode}}
  - {name: decode, algorithm: decode, inputs: {video: clip}}
""",
    )
    with pytest.raises(ConfigError, match="must be listed before it"):
        load_catalog([ALGORITHMS], [folder])


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    folder = _pipeline(tmp_path, "name: p\nstages: [\n")
    with pytest.raises(ConfigError, match=r"line .*not valid YAML"):
        load_catalog([ALGORITHMS], [folder])


def test_a_bad_algorithm_manifest_is_refused(tmp_path: Path) -> None:
    algo = tmp_path / "algos" / "x"
    algo.mkdir(parents=True)
    (algo / "algorithm.yaml").write_text(
        "name: x\nversion: one\nimage: i\ncommand: [run]\naccelerators: {cpu: {}}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_catalog([tmp_path / "algos"], [])
    assert caught.value.field == "version"
    assert str(algo / "algorithm.yaml") in str(caught.value)


def test_a_bad_params_schema_is_refused(tmp_path: Path) -> None:
    algo = tmp_path / "algos" / "x"
    algo.mkdir(parents=True)
    (algo / "algorithm.yaml").write_text(
        "name: x\nversion: 1.0.0\nimage: i\ncommand: [run]\naccelerators: {cpu: {}}\n"
        "params_schema: {type: objekt}\n"
    )
    with pytest.raises(ConfigError, match="not a valid JSON Schema"):
        load_catalog([tmp_path / "algos"], [])


def _manifest(version: str) -> AlgorithmManifest:
    return AlgorithmManifest(
        name="faces", version=version, image="i", command=["run"], accelerators={"cpu": {}}
    )


def _newest(versions: list[str], channel: str = "dev") -> str:
    catalog = Catalog()
    for version in versions:
        catalog.add_algorithm(_manifest(version), "test", channel=channel)
    return catalog.algorithm("faces", channel).version


@pytest.mark.parametrize(
    ("versions", "newest"),
    [
        # Pre-releases come before their release and are ordered among themselves.
        (["1.0.0-rc1", "1.0.0-rc2"], "1.0.0-rc2"),
        (["1.0.0", "1.0.0-rc.2"], "1.0.0"),
        # Numeric identifiers compare as numbers, not text.
        (["1.0.0-rc.2", "1.0.0-rc.10"], "1.0.0-rc.10"),
        (["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-beta", "1.0.0-beta.2"], "1.0.0-beta.2"),
        (["0.9.9", "1.0.0-rc.1", "0.10.0"], "1.0.0-rc.1"),
        # Build metadata does not raise precedence.
        (["1.0.0+build.99", "1.0.1-rc.1"], "1.0.1-rc.1"),
        (["1.0.0-rc.1+build.5", "1.0.0"], "1.0.0"),
        # Equal precedence: the higher build metadata, whatever the registration order.
        (["1.0.0+build.9", "1.0.0+build.10"], "1.0.0+build.10"),
        (["1.0.0", "1.0.0+build.1"], "1.0.0+build.1"),
    ],
)
@pytest.mark.parametrize("channel", ["dev", "stable"])
def test_the_newest_version_follows_semver_whatever_the_registration_order(
    versions: list[str], newest: str, channel: str
) -> None:
    for order in itertools.permutations(versions):
        assert _newest(list(order), channel) == newest, order


@pytest.mark.parametrize(
    ("version", "problem"),
    [
        ("1.0", "not a SemVer 2.0 version"),
        ("one", "not a SemVer 2.0 version"),
        ("01.0.0", "not a SemVer 2.0 version"),
        ("1.0.0-rc..1", "not a SemVer 2.0 version"),
    ],
)
def test_a_version_that_is_not_semver_is_refused_saying_so(
    tmp_path: Path, version: str, problem: str
) -> None:
    algo = tmp_path / "algos" / "x"
    algo.mkdir(parents=True)
    (algo / "algorithm.yaml").write_text(
        f"name: x\nversion: '{version}'\nimage: i\ncommand: [run]\naccelerators: {{cpu: {{}}}}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_catalog([tmp_path / "algos"], [])
    assert caught.value.field == "version"
    assert problem in caught.value.problem and repr(version) in caught.value.problem


def test_a_pre_release_with_build_metadata_is_a_valid_version() -> None:
    assert _manifest("1.0.0-rc.1+build.7").ref == "faces@1.0.0-rc.1+build.7"


NOT_A_QUANTITY = "is not a Kubernetes quantity"


@pytest.mark.parametrize(
    ("resources", "field", "problem"),
    [
        ("{cpu: lots}", "accelerators.cpu.cpu", f"'lots' {NOT_A_QUANTITY}"),
        ("{cpu: '1.5.5'}", "accelerators.cpu.cpu", f"'1.5.5' {NOT_A_QUANTITY}"),
        ("{cpu: ' 1'}", "accelerators.cpu.cpu", f"' 1' {NOT_A_QUANTITY}"),
        ('{cpu: "1\\n"}', "accelerators.cpu.cpu", f"'1\\n' {NOT_A_QUANTITY}"),
        ("{cpu: .inf}", "accelerators.cpu.cpu", f"'inf' {NOT_A_QUANTITY}"),
        ("{cpu: Infinity}", "accelerators.cpu.cpu", f"'Infinity' {NOT_A_QUANTITY}"),
        ("{cpu: NaN}", "accelerators.cpu.cpu", f"'NaN' {NOT_A_QUANTITY}"),
        ("{cpu: '-1'}", "accelerators.cpu.cpu", "'-1' must be more than zero"),
        ("{memory: 2 GB}", "accelerators.cpu.memory", f"'2 GB' {NOT_A_QUANTITY}"),
        ("{memory: 2gi}", "accelerators.cpu.memory", f"'2gi' {NOT_A_QUANTITY}"),
        ("{memory: ''}", "accelerators.cpu.memory", f"'' {NOT_A_QUANTITY}"),
        ("{memory: '0'}", "accelerators.cpu.memory", "'0' must be more than zero"),
        # The API server would wrap a scale past 32 bits into another amount.
        ("{memory: 1e2147483648}", "accelerators.cpu.memory", f"'1e2147483648' {NOT_A_QUANTITY}"),
        ("{memory: '1e-99999999999'}", "accelerators.cpu.memory", NOT_A_QUANTITY),
        # Digits other than ASCII ones are digits to Python's \\d, not to Kubernetes.
        ("{cpu: '\u0665'}", "accelerators.cpu.cpu", NOT_A_QUANTITY),
    ],
)
def test_a_resource_that_is_not_a_kubernetes_quantity_is_refused(
    tmp_path: Path, resources: str, field: str, problem: str
) -> None:
    algo = tmp_path / "algos" / "x"
    algo.mkdir(parents=True)
    (algo / "algorithm.yaml").write_text(
        f"name: x\nversion: 1.0.0\nimage: i\ncommand: [run]\naccelerators: {{cpu: {resources}}}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_catalog([tmp_path / "algos"], [])
    assert caught.value.field == field
    assert problem in caught.value.problem


@pytest.mark.parametrize(
    ("cpu", "memory"),
    [
        ("500m", "512Mi"),
        ("2", "1Gi"),
        ("0.5", "1e9"),
        ("+.5", "1E"),
        (2, 1073741824),
        (0.25, "64M"),
    ],
)
def test_kubernetes_quantities_are_accepted_as_written(cpu: object, memory: object) -> None:
    manifest = AlgorithmManifest.model_validate(
        {
            "name": "x",
            "version": "1.0.0",
            "image": "i",
            "command": ["run"],
            "accelerators": {"cpu": {"cpu": cpu, "memory": memory}},
        }
    )
    resources = manifest.accelerators["cpu"]
    # YAML numbers (cpu: 2) become the quantity's text, as a Job spec carries it.
    assert (resources.cpu, resources.memory) == (str(cpu), str(memory))
