"""API keys: ``cfk_<id>_<secret>``. Only a hash of the secret is stored; the id finds
the row, the secret proves possession."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from orchestrator.errors import CamflowError
from orchestrator.store import ApiKey, Store
from orchestrator.store.models import Role, utcnow

PREFIX = "cfk"


def _hash(secret: str) -> str:
    # The secret is 256 random bits: a fast hash is as strong as a slow one here.
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(
    store: Store, tenant: str, role: Role, camera: str | None = None, name: str = ""
) -> tuple[ApiKey, str]:
    """Records a new key and returns it with its full text, which is shown only once."""
    if role == Role.CAMERA and not camera:
        raise CamflowError("a camera key needs --camera: the one camera it may upload for")
    if role != Role.CAMERA and camera:
        raise CamflowError("--camera is only for camera keys")
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    row = ApiKey(
        id=key_id, name=name, tenant=tenant, role=role, camera=camera, secret_hash=_hash(secret)
    )
    store.add_api_key(row)
    return row, f"{PREFIX}_{key_id}_{secret}"


def verify(store: Store, text: str) -> ApiKey | None:
    """The live key ``text`` names, or None (unknown, wrong secret, revoked)."""
    prefix, _, rest = text.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != PREFIX or not key_id or not secret:
        return None
    row = store.api_key(key_id)
    if row is None or row.revoked_at is not None:
        return None
    return row if hmac.compare_digest(row.secret_hash, _hash(secret)) else None


def revoke(store: Store, key_id: str) -> bool:
    return store.revoke_api_key(key_id, utcnow())
