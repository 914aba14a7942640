"""The meter: time, memory, tokens, FLOPs and money, measured once for every strategy."""

from lmtailor.measure.meter import Meter, estimate_flops
from lmtailor.measure.pricing import Pricing

__all__ = ["Meter", "Pricing", "estimate_flops"]
