"""Money: hardware $/hour and API $/1M tokens, with documented defaults the experiment file overrides.

An API model is never billed $0 by accident: a model with no price is refused at validation
(``unpriced_api_problem``), and a deliberate $0 (a local endpoint, a free tier) needs ``unpriced: true`` on its
``pricing.api_models`` entry; the report then marks its rows "unpriced".
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ApiPrice(BaseModel):
    """List price of one API model, in $ per million tokens (or ``unpriced: true`` to bill it $0 on purpose)."""

    model_config = ConfigDict(extra="forbid")

    input_usd_per_1m: float = Field(0.0, ge=0, description="$ per 1M input (prompt) tokens")
    output_usd_per_1m: float = Field(0.0, ge=0, description="$ per 1M output (completion) tokens")
    unpriced: bool = Field(False, description="true: bill this model $0 on purpose (a local endpoint, a free "
                                              "tier); the report marks its rows unpriced. Without it a price of 0 "
                                              "is refused")

    @model_validator(mode="after")
    def _a_price_or_unpriced(self) -> "ApiPrice":
        priced = self.input_usd_per_1m > 0 or self.output_usd_per_1m > 0
        if self.unpriced and priced:
            raise ValueError("unpriced: true with a price: remove one of them")
        if not self.unpriced and not priced:
            raise ValueError("input_usd_per_1m and output_usd_per_1m are both 0 (or missing), which would bill "
                             "this API model as free; give its prices, or set unpriced: true if $0 is deliberate")
        return self


class Pricing(BaseModel):
    """Prices used to turn measured time and tokens into dollars."""

    model_config = ConfigDict(extra="forbid")

    # Defaults: a 2-vCPU general-purpose cloud VM (~$0.10/h) and a single 24 GB data-centre GPU (~$1.20/h),
    # on-demand list prices of the big clouds in 2025-26, rounded. Override them with your own.
    cpu_usd_per_hour: float = Field(0.10, ge=0, description="$/hour of the CPU machine a run uses")
    cuda_usd_per_hour: float = Field(1.20, ge=0, description="$/hour of one GPU machine")
    mps_usd_per_hour: float = Field(0.10, ge=0, description="$/hour of an Apple-silicon machine")
    api_usd_per_1m_input_tokens: float = Field(
        0.0, ge=0, description="API price of input tokens for an API model not in api_models (0: none, so an "
                               "unlisted model is refused)")
    api_usd_per_1m_output_tokens: float = Field(
        0.0, ge=0, description="API price of output tokens for an API model not in api_models")
    api_models: dict[str, ApiPrice] = Field(
        default_factory=dict, description="per-model API prices keyed by the model name of an openai:MODEL@URL "
                                          "reference (e.g. gpt-4o-mini); a model not listed uses the api_usd_* "
                                          "prices, and is refused when they are 0")

    def usd_per_hour(self, hardware: str) -> float:
        """Return the hourly price of ``hardware`` ("cpu", "cuda" or "mps")."""
        return getattr(self, f"{hardware}_usd_per_hour")

    def usd(self, hardware: str, seconds: float) -> float:
        """Return the cost of ``seconds`` of ``hardware`` time."""
        return self.usd_per_hour(hardware) * seconds / 3600.0

    def api_price(self, model: str) -> tuple[ApiPrice, str]:
        """The price of API model ``model`` and where it came from ("pricing.api_models.<model>" or the default)."""
        if model in self.api_models:
            return self.api_models[model], f"pricing.api_models.{model}"
        # constructed, not validated: with the defaults at 0 this is the "no price" that validation refuses up front
        return (ApiPrice.model_construct(input_usd_per_1m=self.api_usd_per_1m_input_tokens,
                                         output_usd_per_1m=self.api_usd_per_1m_output_tokens,
                                         unpriced=not self.is_priced(model)),
                "pricing.api_usd_per_1m_input_tokens / api_usd_per_1m_output_tokens")

    def is_priced(self, model: str) -> bool:
        """Whether API model ``model`` has a price (its own, or a non-zero default), or is unpriced on purpose."""
        if model in self.api_models:
            return True
        return self.api_usd_per_1m_input_tokens > 0 or self.api_usd_per_1m_output_tokens > 0

    def is_unpriced(self, model: str) -> bool:
        """Whether API model ``model`` is billed $0: on purpose (``unpriced: true``) or for want of a price."""
        return (self.api_models[model].unpriced if model in self.api_models
                else not self.is_priced(model))

    def api_usd(self, model: str, input_tokens: int, output_tokens: int) -> float:
        """What ``input_tokens`` in and ``output_tokens`` out cost at ``model``'s API price."""
        price, _ = self.api_price(model)
        return (input_tokens * price.input_usd_per_1m + output_tokens * price.output_usd_per_1m) / 1e6


def unpriced_api_problem(model: str) -> str:
    """What to say when API model ``model`` has no price: the key to add and the YAML line that adds it."""
    return (f"the API model {model!r} has no price, so every request would be billed $0. Add its list price under "
            f"pricing.api_models (in $ per 1M tokens), e.g.\n"
            f"      pricing:\n        api_models:\n"
            f"          {model}: {{input_usd_per_1m: 0.15, output_usd_per_1m: 0.60}}\n"
            f"    or, if $0 is deliberate (a local endpoint, a free tier): {model}: {{unpriced: true}}")
