"""Model references that name an OpenAI-compatible endpoint: ``openai:MODEL@BASE_URL``.

The rule: the base URL starts at the **last** ``@`` that is directly followed by ``http://`` or ``https://``;
everything between ``openai:`` and that ``@`` is the model name, taken as it is. So a model name may contain ``:``,
``/`` and even ``@`` (``openai:meta-llama/Llama-3.1-8B-Instruct@http://host:8000/v1``,
``openai:claude-3@20240229@https://host/v1``), and the URL may not contain ``@`` (no ``user:password@host``: the
key belongs in the environment variable ``api.key_env`` names, never in the experiment file).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from lmtailor.errors import UserError

PREFIX = "openai:"
EXPECTED = ("openai:MODEL@BASE_URL, e.g. openai:gpt-4o-mini@https://api.openai.com/v1 or "
            "openai:smollm2@http://127.0.0.1:8000/v1")
_URL_START = re.compile(r"@(?=https?://)")


@dataclass(frozen=True)
class EndpointRef:
    """A parsed ``openai:MODEL@BASE_URL``: the model name the endpoint knows, and its base URL (no trailing ``/``)."""

    model: str
    base_url: str
    ref: str  # the reference as written, for messages and provenance


def is_remote(ref: str) -> bool:
    """Whether ``ref`` names an OpenAI-compatible endpoint rather than a local or hub model."""
    return ref.startswith(PREFIX)


def parse_endpoint(ref: str) -> EndpointRef:
    """Split ``openai:MODEL@BASE_URL`` (see the module docstring for the rule); raise a UserError naming ``ref``."""
    if not is_remote(ref):
        raise UserError(f"model reference {ref!r} does not start with {PREFIX!r}; expected {EXPECTED}")
    if any(c.isspace() for c in ref):
        raise UserError(f"model reference {ref!r} contains whitespace; expected {EXPECTED}")
    rest = ref[len(PREFIX):]
    starts = [m.start() for m in _URL_START.finditer(rest)]
    if not starts:
        if "@" in rest and "://" in rest.rsplit("@", 1)[1]:
            scheme = rest.rsplit("@", 1)[1].split("://", 1)[0]
            raise UserError(f"model reference {ref!r}: the base URL must use http:// or https://, not {scheme}://; "
                            f"expected {EXPECTED}")
        raise UserError(f"model reference {ref!r} has no base URL (an '@' followed by http:// or https://); "
                        f"expected {EXPECTED}")
    model, base_url = rest[: starts[-1]], rest[starts[-1] + 1:].rstrip("/")
    if not model:
        raise UserError(f"model reference {ref!r} names no model before the '@'; expected {EXPECTED}")
    _check_url(ref, base_url)
    return EndpointRef(model=model, base_url=base_url, ref=ref)


def _check_url(ref: str, base_url: str) -> None:
    parts = urlsplit(base_url)
    if "@" in parts.netloc:
        raise UserError(f"model reference {ref!r}: the base URL carries credentials (user@host); put the key in the "
                        "environment variable api.key_env names (default OPENAI_API_KEY) instead")
    try:
        parts.port  # noqa: B018 -- raises on a port that is not a number in range
    except ValueError:
        raise UserError(f"model reference {ref!r}: the base URL {base_url!r} has an invalid port; "
                        f"expected {EXPECTED}") from None
    if not parts.hostname:
        raise UserError(f"model reference {ref!r}: the base URL {base_url!r} has no host; expected {EXPECTED}")
    if parts.query or parts.fragment:
        raise UserError(f"model reference {ref!r}: the base URL {base_url!r} has a query or fragment; give the "
                        f"bare base URL (requests go to BASE_URL/chat/completions); expected {EXPECTED}")


def is_loopback(base_url: str) -> bool:
    """Whether ``base_url``'s host is this machine: ``localhost``, 127.0.0.0/8 or ``::1`` (an IPv4-mapped one too)."""
    host = (urlsplit(base_url).hostname or "").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback
