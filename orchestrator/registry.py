"""The algorithm registry: immutable versions, dev and stable channels."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from orchestrator.domain.algorithm import AlgorithmManifest
from orchestrator.domain.catalog import (
    Catalog,
    algorithm_files,
    load_algorithm,
)
from orchestrator.domain.layout import NAME as TENANT_NAME
from orchestrator.domain.pipeline import PipelineSpec
from orchestrator.errors import CamflowError, NotFound
from orchestrator.store import AlgorithmVersion, Store
from orchestrator.store.models import Channel, iso, utcnow

log = logging.getLogger("camflow.registry")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class RegistryError(CamflowError):
    """A registration or promotion was refused."""


#: Manifest fields added after versions were first registered, with their defaults: left
#: out of the digest while at the default, so that what an earlier camflow registered
#: keeps its digest (and is not refused as "different content") after an upgrade.
_ADDED_LATER = {"batch": False, "thread_safe": False}


def content_digest(
    manifest: AlgorithmManifest,
    image_digest: str | None,
    image_digests: Mapping[str, str] | None = None,
) -> str:
    fields = manifest.model_dump(mode="json")
    for name, default in _ADDED_LATER.items():
        if fields.get(name) == default:
            del fields[name]
    content: dict[str, Any] = {"manifest": fields, "image_digest": image_digest}
    if image_digests:
        # Only when given, so that versions registered before keep their digest.
        content["image_digests"] = dict(sorted(image_digests.items()))
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


class Registry:
    def __init__(self, store: Store, clock: Callable[[], datetime] = utcnow) -> None:
        self.store = store
        self.clock = clock

    def register(
        self,
        path: Path,
        image_digest: str | None = None,
        owner: str | None = None,
        image_digests: Mapping[str, str] | None = None,
    ) -> tuple[AlgorithmVersion, bool]:
        """Validates ``path`` (a folder or its algorithm.yaml) and records the version on
        ``dev``. Returns the row and whether it is new. Registering the same content
        again is a no-op; the same version with other content is refused. ``owner``:
        the tenant it is registered for (None: the operator's, for every tenant)."""
        file = path / "algorithm.yaml" if path.is_dir() else path
        return self.register_manifest(
            load_algorithm(file), image_digest, file.parent.resolve(), owner, image_digests
        )

    def register_manifest(
        self,
        manifest: AlgorithmManifest,
        image_digest: str | None = None,
        folder: Path | None = None,
        owner: str | None = None,
        image_digests: Mapping[str, str] | None = None,
    ) -> tuple[AlgorithmVersion, bool]:
        """As ``register``, for a manifest that came without a folder (over the API).
        ``image_digests``: accelerator -> digest of that accelerator's own image."""
        where = str(folder / "algorithm.yaml") if folder else manifest.ref
        if image_digest is not None and not DIGEST.fullmatch(image_digest):
            raise RegistryError(
                f"image digest {image_digest!r} is not of the form sha256:<64 hex digits>; "
                f"take it from `docker buildx imagetools inspect {manifest.image}`"
            )
        if owner is not None and not TENANT_NAME.fullmatch(owner):
            raise RegistryError(
                f"{owner!r} is not a tenant name (the first segment of an upload key: "
                "letters, digits, _ and -)"
            )
        image_digests = dict(image_digests or {})
        for accelerator, value in image_digests.items():
            _check_accelerator_digest(manifest, accelerator, value)
        digest = content_digest(manifest, image_digest, image_digests)
        existing = self.store.get_algorithm_version(manifest.ref)
        row = existing or self.store.add_algorithm_version(
            AlgorithmVersion(
                id=manifest.ref,
                name=manifest.name,
                version=manifest.version,
                manifest=manifest.model_dump(mode="json"),
                content_digest=digest,
                image_digest=image_digest,
                source=str(folder) if folder else None,
                owner=owner,
                registered_at=self.clock(),
                image_digests=image_digests or None,
            )
        )
        if row.content_digest != digest:
            raise RegistryError(
                f"{manifest.ref} is already registered with different content: versions "
                f"are immutable; give {where} a new version (registered "
                f"{row.content_digest[:15]}…, this file {digest[:15]}…)"
            )
        return row, existing is None

    def sync(self, directories: Iterable[Path]) -> list[str]:
        """Registers every algorithm folder under ``directories`` not registered yet."""
        added = []
        for file in algorithm_files(directories):
            # Also refuses a folder whose content changed under the same version.
            row, created = self.register(file)
            if created:
                added.append(row.id)
        if added:
            log.info("registered %s from %s", ", ".join(added), ", ".join(map(str, directories)))
        return added

    def promote(self, name: str, version: str) -> AlgorithmVersion:
        row = self.store.set_channel(f"{name}@{version}", Channel.STABLE, self.clock())
        if row is None:
            known = [r.version for r in self.store.algorithm_versions(name)]
            raise NotFound(
                f"{name}@{version} is not registered"
                + (
                    f"; {name} has {known}"
                    if known
                    else "; register it first: camflow algorithms register PATH"
                )
            )
        log.info("promoted %s to stable", row.id)
        return row

    def publish(self, name: str, version: str) -> AlgorithmVersion:
        """Lets every tenant's clips run ``name@version`` (an admin's decision: until
        then an author's version runs only on its own tenant's clips)."""
        row = self.store.set_published(f"{name}@{version}", self.clock())
        if row is None:
            known = [r.version for r in self.store.algorithm_versions(name)]
            raise NotFound(
                f"{name}@{version} is not registered" + (f"; {name} has {known}" if known else "")
            )
        log.info("published %s for every tenant", row.id)
        return row

    def catalog(self, specs: Iterable[tuple[PipelineSpec, str]]) -> Catalog:
        catalog = Catalog()
        for row in self.store.algorithm_versions():
            catalog.add_algorithm(
                AlgorithmManifest.model_validate(row.manifest),
                f"registry:{row.id}",
                channel=row.channel,
                image_digest=row.image_digest,
                folder=Path(row.source) if row.source else None,
                owner=row.owner,
                published=row.published,
                accelerator_digests=row.image_digests,
            )
        for spec, source in specs:
            catalog.add_pipeline(spec, source)
        return catalog


def _check_accelerator_digest(manifest: AlgorithmManifest, accelerator: str, value: str) -> None:
    resources = manifest.accelerators.get(accelerator)  # type: ignore[call-overload]
    if resources is None:
        raise RegistryError(
            f"an image digest for {accelerator!r}, which {manifest.ref} does not support "
            f"(it has {sorted(manifest.accelerators)})"
        )
    if not resources.image:
        raise RegistryError(
            f"{manifest.ref} has no image of its own for {accelerator!r} (no "
            f"accelerators.{accelerator}.image): its default image's digest is "
            "--image-digest sha256:…"
        )
    if not DIGEST.fullmatch(value):
        raise RegistryError(
            f"image digest {value!r} for {accelerator} is not of the form "
            f"sha256:<64 hex digits>; take it from `docker buildx imagetools inspect "
            f"{resources.image}`"
        )


class CatalogCache:
    """The current catalog, rebuilt only when the registry changed."""

    def __init__(self, registry: Registry, specs: list[tuple[PipelineSpec, str]]) -> None:
        self.registry = registry
        self.specs = specs
        self._stamp: object = None
        self._catalog: Catalog | None = None

    def current(self) -> Catalog:
        stamp = self.registry.store.registry_stamp()
        if self._catalog is None or stamp != self._stamp:
            self._catalog = self.registry.catalog(self.specs)
            self._stamp = stamp
        return self._catalog


def version_json(row: AlgorithmVersion) -> dict[str, Any]:
    manifest = row.manifest
    return {
        "name": row.name,
        "version": row.version,
        "channel": str(row.channel),
        "image": manifest["image"],
        "image_digest": row.image_digest,
        "image_digests": row.image_digests or {},
        "content_digest": row.content_digest,
        "accelerators": manifest["accelerators"],
        "inputs": manifest["inputs"],
        "optional_inputs": manifest.get("optional_inputs", []),
        "params_schema": manifest["params_schema"],
        "timeout_seconds": manifest["timeout_seconds"],
        "retries": manifest["retries"],
        "source": row.source,
        "registered_at": iso(row.registered_at),
        "promoted_at": iso(row.promoted_at),
        # None: the operator's (built in, or registered with the CLI), for every tenant.
        "tenant": row.owner,
        "published": row.published,
        "published_at": iso(row.published_at),
    }
