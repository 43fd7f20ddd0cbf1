"""Endpoint secrets and delivery signatures, as Standard Webhooks defines them: the
``standardwebhooks`` package signs here, so a receiver verifies with the same library
(``Webhook(secret).verify(body, headers)``) or any other implementation of the spec."""

from __future__ import annotations

import base64
import secrets
from datetime import datetime

from standardwebhooks import Webhook

#: A secret's prefix; what follows is base64 of its bytes (the spec's form).
PREFIX = "whsec_"
#: 24 random bytes (192 bits), within the 24-64 the spec asks for.
SECRET_BYTES = 24


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def headers(secret: str, message_id: str, at: datetime, body: bytes) -> dict[str, str]:
    """The three headers of one attempt to deliver ``body``: the id stays the same on
    every attempt, the timestamp is this attempt's (receivers refuse old ones) and the
    signature covers id, timestamp and body together."""
    signature = Webhook(secret).sign(message_id, at, body.decode())
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
    }
