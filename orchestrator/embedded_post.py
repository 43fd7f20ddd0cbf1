"""Browser-based POST uploads on the embedded S3, checked as S3 checks them.

moto stores whatever a form POST sends (it reads neither the policy's signature nor its
conditions), and an enforcing embedded S3 refuses every unsigned request; so the form
of a presigned POST (the API's upload grants) is checked here instead: signed by the
orchestrator's own key, not expired, and every condition of its policy met (the bucket,
the exact key, the content type, the content-length range), every field it sends named
by the policy. Only then does moto see it.

``post_problem`` is the check, pure; ``check_form_upload`` reads a WSGI request for it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

#: Form fields S3 never expects a policy to name.
_UNNAMED = {"policy", "x-amz-signature", "file"}
#: Request bodies above this stay on disk while they are checked, not in memory.
_IN_MEMORY = 1024 * 1024


@dataclass(frozen=True)
class Refusal:
    status: str
    code: str
    message: str

    def respond(self, start_response: Callable[..., Any]) -> Iterable[bytes]:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{self.code}</Code><Message>{self.message}</Message></Error>"
        ).encode()
        start_response(
            self.status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
        )
        return [body]


def _denied(message: str) -> Refusal:
    return Refusal("403 Forbidden", "AccessDenied", message)


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """SigV4's derived key: the same for a header, a query or a POST policy signature."""
    key = f"AWS4{secret}".encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _condition_failed(condition: Any, fields: Mapping[str, str], bucket: str) -> str | None:
    """Why ``condition`` does not hold for this form, or None."""
    if isinstance(condition, dict) and len(condition) == 1:
        [(name, expected)] = condition.items()
        actual = bucket if name.lower() == "bucket" else fields.get(name.lower())
        return None if actual == expected else f"{name} must be {expected!r}"
    if isinstance(condition, list) and len(condition) == 3:
        operator, name, expected = condition
        if operator == "content-length-range":
            return None  # checked against the file, by the caller
        if isinstance(name, str) and name.startswith("$"):
            field = name[1:].lower()
            actual = bucket if field == "bucket" else fields.get(field)
            if operator == "eq" and actual == expected:
                return None
            if operator == "starts-with" and actual is not None and actual.startswith(expected):
                return None
            return f"{name[1:]} does not meet {operator} {expected!r}"
    return f"the policy has a condition S3 does not know: {condition!r}"


def post_problem(
    fields: Mapping[str, str],
    size: int,
    bucket: str,
    trusted: str,
    secret_of: Callable[[str], str | None],
    now: datetime,
) -> Refusal | None:
    """Why S3 would refuse this form upload of ``size`` bytes to ``bucket``, or None.
    ``fields`` are the form's fields by lowercase name (the file excluded); only
    policies signed by the ``trusted`` key (the orchestrator's) are taken."""
    try:
        credential = fields["x-amz-credential"]
        key_id, date, region, service, _ = credential.split("/")
        encoded = fields["policy"]
        policy = json.loads(base64.b64decode(encoded, validate=True))
        expiration = datetime.fromisoformat(policy["expiration"].replace("Z", "+00:00"))
        conditions = list(policy["conditions"])
        signature = fields["x-amz-signature"]
    except (KeyError, ValueError, TypeError, AttributeError, binascii.Error):
        return _denied("the form is not a presigned POST: no valid policy and signature")
    if fields.get("x-amz-algorithm") != "AWS4-HMAC-SHA256":
        return _denied("the form's x-amz-algorithm must be AWS4-HMAC-SHA256")
    if key_id != trusted:
        return _denied("only the orchestrator's own presigned POSTs are accepted")
    secret = secret_of(key_id)
    if secret is None:
        return _denied("the key that signed this policy is gone")
    expected = hmac.new(
        signing_key(secret, date, region, service), encoded.encode(), hashlib.sha256
    ).hexdigest()
    if not hmac.compare_digest(expected, signature):
        return _denied("the policy's signature does not match")
    if expiration.tzinfo is None or now >= expiration:
        return _denied("Invalid according to Policy: Policy expired.")
    named = {"bucket"}
    for condition in conditions:
        failed = _condition_failed(condition, fields, bucket)
        if failed:
            return _denied(f"Invalid according to Policy: Policy Condition failed: {failed}")
        if isinstance(condition, dict):
            named |= {name.lower() for name in condition}
        elif condition[0] == "content-length-range":
            low, high = int(condition[1]), int(condition[2])
            if size > high:
                return Refusal(
                    "400 Bad Request",
                    "EntityTooLarge",
                    f"Your proposed upload exceeds the maximum allowed size ({high} bytes)",
                )
            if size < low:
                return Refusal(
                    "400 Bad Request",
                    "EntityTooSmall",
                    f"Your proposed upload is smaller than the minimum allowed size ({low} bytes)",
                )
        else:
            named.add(str(condition[1])[1:].lower())
    extra = sorted(
        name for name in fields if name not in _UNNAMED | named and not name.startswith("x-ignore-")
    )
    if extra:
        return _denied("Invalid according to Policy: Extra input fields: " + ", ".join(extra))
    return None


def is_form_upload(environ: Mapping[str, Any]) -> bool:
    """An unsigned POST of a form: what a presigned POST sends."""
    return (
        environ.get("REQUEST_METHOD") == "POST"
        and not environ.get("HTTP_AUTHORIZATION")
        and str(environ.get("CONTENT_TYPE", "")).lower().startswith("multipart/form-data")
    )


def _spool(environ: dict[str, Any], length: int) -> IO[bytes]:
    body = tempfile.SpooledTemporaryFile(max_size=_IN_MEMORY)  # noqa: SIM115 (handed on)
    source = environ["wsgi.input"]
    left = length
    while left > 0:
        chunk = source.read(min(left, 1024 * 1024))
        if not chunk:
            break
        body.write(chunk)
        left -= len(chunk)
    body.seek(0)
    return body


def check_form_upload(
    environ: dict[str, Any],
    trusted: str,
    secret_of: Callable[[str], str | None],
    now: datetime | None = None,
) -> Refusal | dict[str, Any]:
    """The request, ready for moto to read again, when its form passes
    ``post_problem``; else the refusal."""
    from werkzeug.formparser import parse_form_data

    try:
        length = int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        return Refusal("411 Length Required", "MissingContentLength", "send a Content-Length")
    bucket = str(environ.get("PATH_INFO", "")).strip("/")
    if not bucket or "/" in bucket:
        return _denied("a presigned POST goes to its bucket's URL")
    if environ.get("QUERY_STRING"):
        # A form POST with a query is another operation (?delete, ?uploads...) to moto.
        return _denied("a presigned POST's URL has no query")
    body = _spool(environ, length)
    reading = {**environ, "wsgi.input": body}
    _, form, files = parse_form_data(reading)
    # moto reads the form its own way (the first `key`, the last file part): only a form
    # with one of each field, whatever its case, and one file part, `file`, is the form
    # that was checked.
    names = [name.lower() for name, _ in form.items(multi=True)]
    parts = [name for name, _ in files.items(multi=True)]
    if len(names) != len(set(names)) or "file" in names:
        return _denied("the form names a field twice")
    if parts != ["file"]:
        return Refusal(
            "400 Bad Request", "InvalidArgument", "the form must have one file part, named file"
        )
    upload = files["file"]
    upload.stream.seek(0, 2)
    size = upload.stream.tell()
    fields = {name.lower(): value for name, value in form.items()}
    refused = post_problem(fields, size, bucket, trusted, secret_of, now or datetime.now(UTC))
    if refused:
        return refused
    body.seek(0)
    return {**environ, "wsgi.input": body, "CONTENT_LENGTH": str(length)}
