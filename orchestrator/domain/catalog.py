"""Loading pipelines and algorithms from YAML, checked against each other.

Every problem is reported as ConfigError(file, field, problem) so a user can go
straight to the line that needs fixing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

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


@dataclass
class Catalog:
    algorithms: dict[str, dict[str, AlgorithmManifest]] = field(default_factory=dict)
    pipelines: dict[str, Pipeline] = field(default_factory=dict)

    def add_algorithm(self, manifest: AlgorithmManifest, source: str) -> None:
        versions = self.algorithms.setdefault(manifest.name, {})
        if manifest.version in versions and versions[manifest.version] != manifest:
            raise ConfigError(
                source, "version", f"{manifest.ref} is already defined with other content"
            )
        versions[manifest.version] = manifest

    def algorithm(self, name: str, version: str | None = None) -> AlgorithmManifest:
        versions = self.algorithms.get(name)
        if not versions:
            raise KeyError(f"unknown algorithm {name!r}; known: {sorted(self.algorithms)}")
        if version is None:
            return versions[max(versions, key=_version_key)]
        if version not in versions:
            raise KeyError(f"algorithm {name!r} has no version {version!r}; has {sorted(versions)}")
        return versions[version]

    def pipeline(self, name: str) -> Pipeline:
        try:
            return self.pipelines[name]
        except KeyError:
            raise KeyError(f"unknown pipeline {name!r}; known: {sorted(self.pipelines)}") from None

    def resolve(self, spec: PipelineSpec, source: str) -> Pipeline:
        problem = spec.graph_problem()
        if problem:
            raise ConfigError(source, *problem)
        stages: dict[str, ResolvedStage] = {}
        for index, stage in enumerate(spec.stages):
            where = f"stages[{index}]"
            try:
                algorithm = self.algorithm(stage.algorithm_name, stage.algorithm_version)
            except KeyError as exc:
                raise ConfigError(source, f"{where}.algorithm", exc.args[0]) from None
            missing = [name for name in algorithm.inputs if name not in stage.inputs]
            unknown = [
                name
                for name in stage.inputs
                if name not in algorithm.inputs and name not in algorithm.optional_inputs
            ]
            if missing:
                raise ConfigError(
                    source, f"{where}.inputs", f"{algorithm.ref} needs inputs {missing}"
                )
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
            try:
                params = algorithm.validate_params(stage.params)
            except ParamsError as exc:
                raise ConfigError(
                    source, f"{where}.params{exc.pointer.replace('/', '.')}", exc.problem
                ) from None
            stages[stage.name] = ResolvedStage(stage, algorithm, params)
        return Pipeline(spec, stages, source)


def _version_key(version: str) -> tuple[int, ...]:
    core = version.split("-", 1)[0].split("+", 1)[0]
    return tuple(int(part) for part in core.split("."))


def load_catalog(algorithm_dirs: Iterable[Path], pipeline_dirs: Iterable[Path]) -> Catalog:
    """Algorithms from ``<dir>/*/algorithm.yaml``, pipelines from ``<dir>/*.yaml``."""
    catalog = Catalog()
    for directory in algorithm_dirs:
        for path in sorted(Path(directory).glob("*/algorithm.yaml")):
            catalog.add_algorithm(load_algorithm(path), str(path))
    for directory in pipeline_dirs:
        for path in sorted(Path(directory).glob("*.y*ml")):
            spec = parse_model(PipelineSpec, _read_yaml(path), str(path))
            if spec.name in catalog.pipelines:
                raise ConfigError(
                    str(path),
                    "name",
                    f"pipeline {spec.name!r} is also defined in "
                    f"{catalog.pipelines[spec.name].source}",
                )
            catalog.pipelines[spec.name] = catalog.resolve(spec, str(path))
    return catalog
