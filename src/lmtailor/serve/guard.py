"""What every request must carry before the app looks at it: a ``Host`` that names this server, and on POST a JSON body.

Both close ways a web page in the user's browser could drive a key-less server on loopback:

- **DNS rebinding:** a page on ``evil.example`` re-points its own name at 127.0.0.1 and then reads the answers as
  same-origin. Its requests still say ``Host: evil.example``, so only hosts naming this server are accepted: IP
  literals of the bound address (any loopback address when bound to loopback, any address when bound to a wildcard),
  ``localhost`` when loopback reaches the server, the ``--host`` name itself, and ``--allowed-hosts``.
- **Blind CSRF:** a cross-origin ``fetch`` or form may POST ``text/plain`` without a CORS preflight (the server
  never sees the page's origin nor answers preflights). ``application/json`` always needs a preflight, which this
  server does not grant, so any other content type on POST is refused with 415 before the body is read.

Refusals are in OpenAI's error shape and close the connection (the body, if any, is left unread).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Sequence

from starlette.responses import JSONResponse

from lmtailor.serve.protocol import error_body

ANY_HOST = "*"
_WILDCARDS = (ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("::"))
_JSON = "application/json"
_UTF8 = ("utf-8", "utf8")


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return None


def normalize_host(name: str) -> str:
    """A host name as compared: lower case, no trailing dot, IPv6 without brackets and in its compressed form."""
    name = name.strip().lower().rstrip(".")
    ip = _ip(name)
    return str(ip) if ip is not None else name


def host_of(header: str) -> str | None:
    """The host part of a ``Host`` value (``name``, ``name:port``, ``[v6]``, ``[v6]:port``), normalized; None if
    malformed."""
    value = header.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or _ip(value[1:end]) is None:
            return None
        name, rest = value[1:end], value[end + 1:]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
    else:
        name, colon, port = value.partition(":")
        if colon and not port.isdigit():
            return None
    if not name or any(c.isspace() or c in "/\\@?#" for c in name):
        return None
    return normalize_host(name)


@dataclass(frozen=True)
class HostRule:
    """Which ``Host`` values reach a server bound to ``bound``; ``extra`` are ``--allowed-hosts`` (``*``: any)."""

    bound: str
    extra: tuple[str, ...] = ()

    @classmethod
    def of(cls, bound: str, extra: Sequence[str] = ()) -> "HostRule":
        return cls(normalize_host(bound), tuple(sorted({normalize_host(h) for h in extra if h.strip()})))

    def allows(self, host: str) -> bool:
        """Whether a normalized host name (``host_of``) names this server."""
        if ANY_HOST in self.extra or host in self.extra or host == self.bound:
            return True
        bound_ip = _ip(self.bound)
        loopback = self.bound == "localhost" or (bound_ip is not None and bound_ip.is_loopback)
        wildcard = bound_ip in _WILDCARDS
        if host == "localhost":
            return loopback or wildcard
        ip = _ip(host)
        if ip is None or bound_ip is None and not loopback:
            return False
        # an IP literal cannot be re-pointed by DNS: any one reaching the socket is this server
        return wildcard or (loopback and ip.is_loopback) or ip == bound_ip

    def describe(self) -> str:
        """The accepted Host values in words, for the start-up lines."""
        if ANY_HOST in self.extra:
            return "any (--allowed-hosts *)"
        bound_ip = _ip(self.bound)
        if self.bound == "localhost" or (bound_ip is not None and bound_ip.is_loopback):
            names = ["localhost and loopback addresses"]
        elif bound_ip in _WILDCARDS:
            names = ["localhost and IP addresses"]
        else:
            names = [self.bound]
        return ", ".join(names + list(self.extra))


def _header(scope, name: bytes) -> list[str]:
    return [v.decode("latin-1") for k, v in scope.get("headers", ()) if k.lower() == name]


def _shown(value: str) -> str:
    text = value.encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= 80 else text[:77] + "..."


def host_refusal(scope, rule: HostRule) -> tuple[int, str, str] | None:
    """(status, message, code) when the request's ``Host`` does not name this server, else None."""
    values = _header(scope, b"host")
    if len(values) != 1:
        return 400, ("missing Host header" if not values else "several Host headers"), "invalid_host"
    host = host_of(values[0])
    if host is None:
        return 400, f"malformed Host header '{_shown(values[0])}'", "invalid_host"
    if not rule.allows(host):
        return (400, f"the Host header '{_shown(values[0])}' does not name this server (bound to {rule.bound}); a web "
                     "page may be trying to reach it through DNS rebinding. If clients reach the server by this "
                     f"name, start it with --allowed-hosts {_shown(host)}", "host_not_allowed")
    return None


def content_type_refusal(scope) -> tuple[int, str, str] | None:
    """(415, message, code) when a POST does not declare a JSON body in UTF-8, else None."""
    if scope.get("method") != "POST":
        return None
    values = _header(scope, b"content-type")
    given = values[0] if len(values) == 1 else ""
    media, *params = [p.strip() for p in given.split(";")]
    charset = next((p.partition("=")[2].strip().strip('"').lower() for p in params
                    if p.partition("=")[0].strip().lower() == "charset"), None)
    if media.lower() == _JSON and charset in (None, *_UTF8):
        return None
    shown = f"'{_shown(given)}'" if given else "none"
    return (415, f"the request body must be JSON: send 'Content-Type: application/json' (got {shown})",
            "unsupported_media_type")


class RequestGuard:
    """ASGI middleware: refuse, before routing and before reading the body, a foreign ``Host`` and a non-JSON POST."""

    def __init__(self, app, rule: HostRule) -> None:
        self.app = app
        self.rule = rule

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = host_refusal(scope, self.rule) or content_type_refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, message, code = refusal
        response = JSONResponse(error_body(message, "invalid_request_error", None, code), status_code=status,
                                headers={"Connection": "close"})
        await response(scope, receive, send)
