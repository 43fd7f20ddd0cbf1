"""Loading pipelines and algorithms from YAML, checked against each other.

Every problem is reported as ConfigError(file, field, problem) so a user can go
straight to the line that needs fixing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import semver
import yaml
from pydantic import BaseModel, ValidationError

from orchestrator.domain.algorithm import AlgorithmManifest
from orchestrator.domain.pipeline import PipelineSpec, StageSpec
from orchestrator.errors import ConfigError, ParamsError

Model = TypeVar("Model", bound=BaseModel)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot be read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        raise ConfigError(str(path), where, f"is not valid YAML: {exc}") from exc


def _field_name(loc: Iterable[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def parse_model(model: type[Model], data: Any, source: str) -> Model:
    if not isinstance(data, dict):
        raise ConfigError(source, "", f"must be a mapping, found {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        problem = first["msg"]
        if first["type"] == "extra_forbidden":
            problem = "is not a known field (check its spelling)"
        raise ConfigError(source, _field_name(first["loc"]), problem) from exc


def load_algorithm(path: Path) -> AlgorithmManifest:
    return parse_model(AlgorithmManifest, _read_yaml(path), str(path))


@dataclass(frozen=True)
class ResolvedStage:
    """A pipeline stage bound to the exact algorithm version and validated params."""

    spec: StageSpec
    algorithm: AlgorithmManifest
    params: dict[str, Any]
    #: The registered image digest, when the author gave one: what actually runs.
    image_digest: str | None = None
    #: The folder the algorithm was registered from (local runs start there).
    source: Path | None = None
    #: The tenant whose author registered this version; None: the operator's (built-in
    #: and CLI registrations), which every tenant may run.
    owner: str | None = None
    #: An admin published it: every tenant may run it.
    published: bool = False
    #: accelerator -> the registered digest of that accelerator's own image
    #: (``accelerators.<acc>.image``), pinned like the default image's.
    accelerator_digests: Mapping[str, str] = field(default_factory=dict)

    def runs_for(self, tenant: str) -> bool:
        """Whether this version may run on ``tenant``'s clips."""
        return self.owner is None or self.owner == tenant or self.published

    @property
    def timeout_seconds(self) -> int:
        return self.spec.timeout_seconds or self.algorithm.timeout_seconds

    @property
    def retries(self) -> int:
        return self.spec.retries if self.spec.retries is not None else self.algorithm.retries


@dataclass(frozen=True)
class Pipeline:
    spec: PipelineSpec
    stages: dict[str, ResolvedStage]
    source: str

    @property
    def name(self) -> str:
        return self.spec.name

    @cached_property
    def readers(self) -> dict[str, list[str]]:
        """stage -> the stages that read its outputs (or wait for it), in order."""
        return {
            name: [other for other, s in self.stages.items() if name in s.spec.depends_on]
            for name in self.stages
        }

    @property
    def pins(self) -> dict[str, str]:
        """stage -> the exact algorithm version it resolved to."""
        return {name: stage.algorithm.ref for name, stage in self.stages.items()}

    def refusal(self, tenant: str) -> str | None:
        """Why this pipeline may not run on a clip of ``tenant``, or None if it may: it
        must serve the tenant, and every algorithm version it uses must be the tenant's
        own, the operator's, or published by an admin."""
        if not self.spec.serves(tenant):
            return (
                f"pipeline {self.name!r} does not serve tenant {tenant!r}: an admin adds "
                f"the tenant to the `tenants` of {self.source}"
            )
        for name, stage in self.stages.items():
            if not stage.runs_for(tenant):
                algorithm = stage.algorithm
                return (
                    f"stage {name!r} of pipeline {self.name!r} uses {algorithm.ref}, which "
                    "another tenant registered and an admin has not published: it runs only "
                    "on its own tenant's clips (an admin publishes it with `camflow "
                    f"algorithms publish {algorithm.name} {algorithm.version}`)"
                )
        return None


CHANNELS = ("stable", "dev")


@dataclass
class Catalog:
    """Algorithm versions (with their channel) and the pipelines resolved against them.

    A stage names ``name@1.2.0`` (exactly that), ``name@stable`` (the newest promoted
    version), ``name@dev`` (the newest version) or ``name`` (stable if any, else dev).
    """

    algorithms: dict[str, dict[str, AlgorithmManifest]] = field(default_factory=dict)
    pipelines: dict[str, Pipeline] = field(default_factory=dict)
    channels: dict[str, str] = field(default_factory=dict)  # ref -> channel
    image_digests: dict[str, str] = field(default_factory=dict)  # ref -> sha256:...
    sources: dict[str, Path] = field(default_factory=dict)  # ref -> folder
    #: ref -> the tenant that registered it (absent: the operator's).
    owners: dict[str, str] = field(default_factory=dict)
    #: refs an admin published: any tenant may run them.
    published: set[str] = field(default_factory=set)
    #: ref -> {accelerator: digest of that accelerator's own image}.
    accelerator_digests: dict[str, dict[str, str]] = field(default_factory=dict)
    specs: dict[str, tuple[PipelineSpec, str]] = field(default_factory=dict)
    _pinned: dict[tuple[str, tuple[tuple[str, str], ...]], Pipeline] = field(
        default_factory=dict, repr=False
    )

    def add_algorithm(
        self,
        manifest: AlgorithmManifest,
        source: str,
        channel: str = "dev",
        image_digest: str | None = None,
        folder: Path | None = None,
        owner: str | None = None,
        published: bool = False,
        accelerator_digests: Mapping[str, str] | None = None,
    ) -> None:
        versions = self.algorithms.setdefault(manifest.name, {})
        if manifest.version in versions and versions[manifest.version] != manifest:
            raise ConfigError(
                source, "version", f"{manifest.ref} is already defined with other content"
            )
        versions[manifest.version] = manifest
        self.channels[manifest.ref] = channel
        if image_digest:
            self.image_digests[manifest.ref] = image_digest
        if folder is not None:
            self.sources[manifest.ref] = folder
        if owner is not None:
            self.owners[manifest.ref] = owner
        if published:
            self.published.add(manifest.ref)
        if accelerator_digests:
            self.accelerator_digests[manifest.ref] = dict(accelerator_digests)

    def with_algorithm(self, manifest: AlgorithmManifest, folder: Path | None) -> Catalog:
        """A copy that also knows ``manifest`` (replacing a registered one of the same
        version): for trying an algorithm without registering it."""
        algorithms = {name: dict(versions) for name, versions in self.algorithms.items()}
        algorithms.setdefault(manifest.name, {})[manifest.version] = manifest
        sources = dict(self.sources)
        if folder is not None:
            sources[manifest.ref] = folder
        return Catalog(
            algorithms,
            dict(self.pipelines),
            dict(self.channels),
            dict(self.image_digests),
            sources,
            dict(self.owners),
            set(self.published),
            dict(self.accelerator_digests),
            dict(self.specs),
        )

    def algorithm(self, name: str, version: str | None = None) -> AlgorithmManifest:
        versions = self.algorithms.get(name)
        if not versions:
            raise KeyError(f"unknown algorithm {name!r}; known: {sorted(self.algorithms)}")
        if version in (None, "stable", "dev"):
            stable = [v for v in versions if self.channels.get(f"{name}@{v}") == "stable"]
            if version == "stable" and not stable:
                raise KeyError(
                    f"no version of {name!r} is on the stable channel yet; promote one: "
                    f"camflow algorithms promote {name} VERSION"
                )
            pool = stable if version == "stable" or (version is None and stable) else versions
            return versions[max(pool, key=_version_key)]
        if version not in versions:
            raise KeyError(f"algorithm {name!r} has no version {version!r}; has {sorted(versions)}")
        return versions[version]

    def pipeline(self, name: str) -> Pipeline:
        try:
            return self.pipelines[name]
        except KeyError:
            raise KeyError(f"unknown pipeline {name!r}; known: {sorted(self.pipelines)}") from None

    def pipeline_for_run(self, name: str, pins: dict[str, str] | None) -> Pipeline | None:
        """The pipeline with the algorithm versions a run was created with, even if a
        channel has moved on since; None if the pipeline is no longer defined."""
        current = self.pipelines.get(name)
        if current is None or not pins or pins == current.pins:
            return current
        key = (name, tuple(sorted(pins.items())))
        if key not in self._pinned:
            spec, source = self.specs[name]
            self._pinned[key] = self.resolve(spec, source, pins)
        return self._pinned[key]

    def add_pipeline(self, spec: PipelineSpec, source: str) -> Pipeline:
        if spec.name in self.pipelines:
            raise ConfigError(
                source,
                "name",
                f"pipeline {spec.name!r} is also defined in {self.pipelines[spec.name].source}",
            )
        pipeline = self.resolve(spec, source)
        self.specs[spec.name] = (spec, source)
        self.pipelines[spec.name] = pipeline
        return pipeline

    def resolve(
        self, spec: PipelineSpec, source: str, pins: dict[str, str] | None = None
    ) -> Pipeline:
        problem = spec.graph_problem()
        if problem:
            raise ConfigError(source, *problem)
        stages: dict[str, ResolvedStage] = {}
        for index, stage in enumerate(spec.stages):
            where = f"stages[{index}]"
            name, version = stage.algorithm_name, stage.algorithm_version
            if pins and stage.name in pins:
                name, _, version = pins[stage.name].partition("@")
            try:
                algorithm = self.algorithm(name, version)
            except KeyError as exc:
                raise ConfigError(source, f"{where}.algorithm", exc.args[0]) from None
            self._check_stage(algorithm, stage, source, where)
            try:
                params = algorithm.validate_params(stage.params)
            except ParamsError as exc:
                raise ConfigError(
                    source,
                    f"{where}.params{exc.pointer.replace('/', '.')}",
                    f"{exc.problem} (at JSON pointer {exc.pointer or '/'} of the params)",
                ) from None
            stages[stage.name] = ResolvedStage(
                stage,
                algorithm,
                params,
                self.image_digests.get(algorithm.ref),
                self.sources.get(algorithm.ref),
                owner=self.owners.get(algorithm.ref),
                published=algorithm.ref in self.published,
                accelerator_digests=self.accelerator_digests.get(algorithm.ref, {}),
            )
        return Pipeline(spec, stages, source)

    @staticmethod
    def _check_stage(
        algorithm: AlgorithmManifest, stage: StageSpec, source: str, where: str
    ) -> None:
        missing = [name for name in algorithm.inputs if name not in stage.inputs]
        unknown = [
            name
            for name in stage.inputs
            if name not in algorithm.inputs and name not in algorithm.optional_inputs
        ]
        if missing:
            raise ConfigError(source, f"{where}.inputs", f"{algorithm.ref} needs inputs {missing}")
        if unknown:
            raise ConfigError(
                source,
                f"{where}.inputs",
                f"{algorithm.ref} has no inputs {unknown}; it reads "
                f"{algorithm.inputs + algorithm.optional_inputs}",
            )
        wanted = stage.placement.accelerator
        if wanted not in algorithm.accelerators and not (
            stage.placement.fallback and stage.placement.fallback in algorithm.accelerators
        ):
            raise ConfigError(
                source,
                f"{where}.placement.accelerator",
                f"{algorithm.ref} supports only {sorted(algorithm.accelerators)}",
            )


def _version_key(version: str) -> tuple[semver.Version, tuple[tuple[int, int | str], ...]]:
    """Orders versions by SemVer 2.0 precedence (pre-releases before their release,
    build metadata ignored). Versions of equal precedence differ only in build metadata;
    those are ordered by it, compared like pre-release identifiers (numbers as numbers),
    so the pick never depends on the order in which the versions were registered or
    loaded (the registry hands them over sorted by ref, not by time)."""
    parsed = semver.Version.parse(version)
    build = tuple(
        (0, int(part)) if part.isdigit() else (1, part)
        for part in (parsed.build.split(".") if parsed.build else ())
    )
    return parsed.replace(build=None), build


def algorithm_files(directories: Iterable[Path]) -> list[Path]:
    return [p for d in directories for p in sorted(Path(d).glob("*/algorithm.yaml"))]


def load_pipeline_specs(directories: Iterable[Path]) -> list[tuple[PipelineSpec, str]]:
    return [
        (parse_model(PipelineSpec, _read_yaml(path), str(path)), str(path))
        for directory in directories
        for path in sorted(Path(directory).glob("*.y*ml"))
    ]


def load_catalog(algorithm_dirs: Iterable[Path], pipeline_dirs: Iterable[Path]) -> Catalog:
    """Algorithms from ``<dir>/*/algorithm.yaml`` (all taken as on ``dev``), pipelines
    from ``<dir>/*.yaml``. With a store, the registry builds the catalog instead."""
    catalog = Catalog()
    for path in algorithm_files(algorithm_dirs):
        catalog.add_algorithm(load_algorithm(path), str(path), folder=path.parent)
    for spec, source in load_pipeline_specs(pipeline_dirs):
        catalog.add_pipeline(spec, source)
    return catalog
