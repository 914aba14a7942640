"""Money: hardware $/hour and API $/1M tokens, with documented defaults the experiment file overrides."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ApiPrice(BaseModel):
    """List price of one API model, in $ per million tokens."""

    model_config = ConfigDict(extra="forbid")

    input_usd_per_1m: float = Field(ge=0, description="$ per 1M input (prompt) tokens")
    output_usd_per_1m: float = Field(ge=0, description="$ per 1M output (completion) tokens")


class Pricing(BaseModel):
    """Prices used to turn measured time and tokens into dollars."""

    model_config = ConfigDict(extra="forbid")

    # Defaults: a 2-vCPU general-purpose cloud VM (~$0.10/h) and a single 24 GB data-centre GPU (~$1.20/h),
    # on-demand list prices of the big clouds in 2025-26, rounded. Override them with your own.
    cpu_usd_per_hour: float = Field(0.10, ge=0, description="$/hour of the CPU machine a run uses")
    cuda_usd_per_hour: float = Field(1.20, ge=0, description="$/hour of one GPU machine")
    mps_usd_per_hour: float = Field(0.10, ge=0, description="$/hour of an Apple-silicon machine")
    api_usd_per_1m_input_tokens: float = Field(0.0, ge=0, description="API price of input tokens (API-backed models)")
    api_usd_per_1m_output_tokens: float = Field(0.0, ge=0, description="API price of output tokens (API-backed models)")
    api_models: dict[str, ApiPrice] = Field(
        default_factory=dict, description="per-model API prices keyed by the model name of an openai:MODEL@URL "
                                          "reference (e.g. gpt-4o-mini); a model not listed uses the api_usd_* prices")

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
        return (ApiPrice(input_usd_per_1m=self.api_usd_per_1m_input_tokens,
                         output_usd_per_1m=self.api_usd_per_1m_output_tokens),
                "pricing.api_usd_per_1m_input_tokens / api_usd_per_1m_output_tokens")

    def api_usd(self, model: str, input_tokens: int, output_tokens: int) -> float:
        """What ``input_tokens`` in and ``output_tokens`` out cost at ``model``'s API price."""
        price, _ = self.api_price(model)
        return (input_tokens * price.input_usd_per_1m + output_tokens * price.output_usd_per_1m) / 1e6
