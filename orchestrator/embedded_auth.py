"""IAM enforcement on the embedded S3, per server.

moto checks every request's signature and the signer's IAM policies once its global
``INITIAL_NO_AUTH_ACTION_COUNT`` is reached, for every server in the process. camflow
wants it per server: the embedded S3 that ``camflow serve`` or ``demo`` starts enforces,
while other moto servers in the same process (the test suite's) may not. So the global
becomes a gate that reads a thread-local flag, and each enforcing server's WSGI app sets
the flag for the request it is serving (werkzeug serves each request on its own thread).

moto cannot authenticate presigned URLs (it reads the Authorization header only), so
this layer verifies a presigned request's SigV4 query signature itself, against the
embedded server's own admin key, the only one that presigns, and then lets it through.
A presigned POST's form is checked against its policy (orchestrator.embedded_post).
Anything unsigned is refused, as S3 refuses it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, quote

from orchestrator.embedded_post import Refusal, check_form_upload, is_form_upload, signing_key

_flag = threading.local()
_installed = threading.Lock()
_ADMIN_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}


class _Gate:
    """Stands in for moto's ``INITIAL_NO_AUTH_ACTION_COUNT``: moto asks
    ``request_count >= INITIAL_NO_AUTH_ACTION_COUNT``; int gives way to our ``__le__``."""

    def __le__(self, other: object) -> bool:
        return bool(getattr(_flag, "enforce", False))

    def __gt__(self, other: object) -> bool:
        return not getattr(_flag, "enforce", False)


def _install_gate() -> None:
    from moto import settings

    with _installed:
        if not isinstance(settings.INITIAL_NO_AUTH_ACTION_COUNT, _Gate):
            settings.INITIAL_NO_AUTH_ACTION_COUNT = _Gate()  # type: ignore[assignment]


def _iam_backend() -> Any:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.iam.models import iam_backends

    return iam_backends[DEFAULT_ACCOUNT_ID]["aws"]


def create_admin(name: str) -> tuple[str, str]:
    """An IAM user allowed everything, made in-process (no request to authenticate yet):
    the orchestrator's own identity on this server. Random keys, held in memory only."""
    iam = _iam_backend()
    user = f"camflow-admin-{name}-{secrets.token_hex(4)}"
    iam.create_user("us-east-1", user)
    iam.put_user_policy(user, "admin", json.dumps(_ADMIN_POLICY))
    key = iam.create_access_key(user)
    return key.access_key_id, key.secret_access_key


def _secret_of(access_key_id: str) -> str | None:
    key = _iam_backend().access_keys.get(access_key_id)
    return None if key is None or key.status != "Active" else key.secret_access_key


def _denied(start_response: Callable[..., Any], code: str, message: str) -> Iterable[bytes]:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    ).encode()
    start_response(
        "403 Forbidden", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
    )
    return [body]


def _uri_encode(text: str) -> str:
    return quote(text, safe="-_.~")


def presigned_problem(environ: dict[str, Any], trusted: str, now: datetime) -> str | None:
    """Why a SigV4 query-signed (presigned) request is refused, or None when its
    signature is the ``trusted`` key's and it has not expired. The canonical request is
    rebuilt as SigV4 defines it (the path as sent, the query sorted and encoded, the
    signed headers, an unsigned payload)."""
    pairs = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    query = dict(pairs)
    try:
        key_id, date, region, service, _ = query["X-Amz-Credential"].split("/")
        stamp = datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        lifetime = int(query["X-Amz-Expires"])
        signed = query["X-Amz-SignedHeaders"].split(";")
        signature = query["X-Amz-Signature"]
    except (KeyError, ValueError):
        return "the presigned URL is malformed"
    if key_id != trusted:
        return "only the orchestrator's own presigned URLs are accepted"
    if now > stamp + timedelta(seconds=lifetime):
        return "the presigned URL has expired"
    secret = _secret_of(key_id)
    if secret is None:
        return "the key that signed this URL is gone"
    headers = {name: environ.get("HTTP_" + name.upper().replace("-", "_"), "") for name in signed}
    if "host" in signed:
        headers["host"] = environ.get("HTTP_HOST", "")
    canonical_query = "&".join(
        f"{_uri_encode(k)}={_uri_encode(v)}" for k, v in sorted(pairs) if k != "X-Amz-Signature"
    )
    path = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "/")
    canonical = "\n".join(
        [
            environ["REQUEST_METHOD"],
            path.split("?", 1)[0],
            canonical_query,
            "".join(f"{name}:{headers[name].strip()}\n" for name in signed),
            ";".join(signed),
            "UNSIGNED-PAYLOAD",
        ]
    )
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            query["X-Amz-Date"],
            f"{date}/{region}/{service}/aws4_request",
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    expected = hmac.new(
        signing_key(secret, date, region, service), to_sign.encode(), hashlib.sha256
    ).hexdigest()
    if not hmac.compare_digest(expected, signature):
        return "the presigned URL's signature does not match"
    return None


class EnforcingApp:
    """WSGI: signed requests go to moto with IAM enforcement on; presigned ones are
    checked here; anything else is refused."""

    def __init__(self, app: Any, admin_key_id: str) -> None:
        _install_gate()
        self.app = app
        self.admin_key_id = admin_key_id

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if str(environ.get("PATH_INFO", "")).startswith("/moto-api"):
            # moto's own admin API checks nothing: it would hand out every key and
            # object, reset the data or turn authentication off.
            return _denied(start_response, "AccessDenied", "not an S3 request")
        if environ.get("HTTP_AUTHORIZATION"):
            return self._pass(environ, start_response, enforce=True)
        if "X-Amz-Signature=" in environ.get("QUERY_STRING", ""):
            problem = presigned_problem(environ, self.admin_key_id, datetime.now(UTC))
            if problem:
                return _denied(start_response, "AccessDenied", problem)
            return self._pass(environ, start_response, enforce=False)
        if is_form_upload(environ):  # a presigned POST (an upload grant): its policy
            checked = check_form_upload(environ, self.admin_key_id, _secret_of)
            if isinstance(checked, Refusal):
                return checked.respond(start_response)
            return self._pass(checked, start_response, enforce=False)
        return _denied(start_response, "AccessDenied", "anonymous requests are not allowed")

    def _pass(
        self, environ: dict[str, Any], start_response: Callable[..., Any], enforce: bool
    ) -> Any:
        _flag.enforce = enforce
        try:
            # moto authorises while it dispatches, before this call returns.
            return self.app(environ, start_response)
        finally:
            _flag.enforce = False
