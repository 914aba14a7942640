"""Who may call the server: no key on loopback, a bearer key (checked in constant time) everywhere else."""

from __future__ import annotations

import hmac
import ipaddress
import os

from lmtailor.errors import UserError
from lmtailor.serve.protocol import APIError

API_KEY_ENV = "LMTAILOR_API_KEY"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``: addresses no other machine can reach."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to a public address
        return False


def resolve_api_key(given: str | None) -> str | None:
    """The key from ``--api-key``, else from the environment variable LMTAILOR_API_KEY; None when neither is set."""
    key = given if given is not None else os.environ.get(API_KEY_ENV)
    return key or None


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to bind anywhere but loopback without an API key: the model would be open to the whole network."""
    if api_key is None and not is_loopback(host):
        raise UserError(f"refusing to serve on {host} without an API key: anyone who can reach this machine could use "
                        f"the model. Set the key in the environment variable {API_KEY_ENV} (or pass --api-key; a "
                        "command-line argument is visible to other users in the process list), or bind to "
                        "127.0.0.1 (the default)")


class BearerAuth:
    """A FastAPI dependency: the request must carry ``Authorization: Bearer KEY`` when a key is set."""

    def __init__(self, api_key: str | None) -> None:
        self._key = api_key.encode("utf-8") if api_key else None

    def __repr__(self) -> str:
        return f"BearerAuth(key={'set' if self._key else None})"

    def __call__(self, authorization: str | None) -> None:
        """Check the value of the Authorization header; raise a 401 in OpenAI's shape when it is missing or wrong."""
        if self._key is None:
            return
        scheme, _, given = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise APIError(401, "missing API key: send the header 'Authorization: Bearer YOUR_KEY'", None,
                           "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.strip().encode("utf-8"), self._key):
            raise APIError(401, "incorrect API key provided", None, "invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
