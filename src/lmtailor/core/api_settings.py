"""The experiment's ``api:`` block: how lmtailor talks to OpenAI-compatible endpoints (``openai:MODEL@BASE_URL``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ApiSettings(BaseModel):
    """Key, limits and caching for every ``openai:`` model reference of an experiment."""

    model_config = ConfigDict(extra="forbid")

    key_env: str = Field(
        "OPENAI_API_KEY", description="environment variable holding the endpoint's API key (the key itself never "
                                      "goes in the experiment file); a loopback endpoint may run without one")
    max_concurrency: int = Field(4, ge=1, le=256, description="requests in flight at once")
    timeout_s: float = Field(120.0, gt=0, description="seconds to wait for one response before retrying it")
    max_retries: int = Field(5, ge=0, le=20, description="retries of a request answered 408/409/429/5xx or timed "
                             "out, with exponential backoff (and the server's Retry-After); then the row fails")
    cache: bool = Field(True, description="keep every response on disk keyed by the request, so a rerun of the "
                                          "experiment sends nothing twice (and pays nothing twice)")
