"""A server's settings: what it serves under which name, who may call it, its limits, and how it batches."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_BATCH = 8
DEFAULT_MAX_TOKENS_LIMIT = 512
DEFAULT_MAX_BODY_BYTES = 1_000_000
DEFAULT_READ_TIMEOUT_S = 30.0  # for the headers, then for the whole body (1 MB at 33 KB/s)


@dataclass(frozen=True)
class ServeSettings:
    """What one server serves under which name, who may call it, and its limits."""

    model_name: str
    api_key: str | None = None  # None: no key needed (loopback only; auth.check_bind enforces it)
    max_batch: int = DEFAULT_MAX_BATCH
    max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    host: str = "127.0.0.1"  # the bound address: which Host headers name this server (guard.HostRule)
    allowed_hosts: tuple[str, ...] = ()  # --allowed-hosts: more names clients use; "*" turns the check off
    prefix_cache: bool = True  # continuous batching reuses the shared prompt prefix's keys and values

    def __repr__(self) -> str:  # never print the key, even in a traceback
        key = "set" if self.api_key else None
        return (f"ServeSettings(model_name={self.model_name!r}, api_key={key}, max_batch={self.max_batch}, "
                f"max_tokens_limit={self.max_tokens_limit}, max_body_bytes={self.max_body_bytes}, "
                f"read_timeout_s={self.read_timeout_s}, host={self.host!r}, allowed_hosts={self.allowed_hosts!r}, "
                f"prefix_cache={self.prefix_cache})")
