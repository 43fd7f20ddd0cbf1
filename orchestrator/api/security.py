"""How a caller presents its API key: `Authorization: Bearer cfk_…` (the scheme's name
in any case, as RFC 9110 has it) or `X-API-Key: cfk_…`. FastAPI's security classes read
them and declare both schemes in the OpenAPI document; they never answer for us
(auto_error=False), so that a missing key is this API's own problem+json 401."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

KEY_FORMAT = "cfk_<id>_<secret>"

bearer = HTTPBearer(
    scheme_name="bearer",
    bearerFormat=KEY_FORMAT,
    description="An API key from `camflow keys create`, as `Authorization: Bearer cfk_…`",
    auto_error=False,
)
api_key_header = APIKeyHeader(
    name="X-API-Key",
    scheme_name="apiKey",
    description="The same API key, for clients that cannot set `Authorization`",
    auto_error=False,
)


def presented_key(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    api_key: Annotated[str | None, Depends(api_key_header)],
) -> str | None:
    """The key text the caller sent, if any; X-API-Key first, as before."""
    text = api_key or (credentials.credentials if credentials else None)
    return text.strip() if text else None
