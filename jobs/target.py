"""The vendor app a job runs against, as the producers see it: its vendor,
what it supports, its rules and its effective rates and caps, all from the configured
app (an API version or batch-size override changes them). No credentials."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import AbstractSet, Mapping

from imshift.vendors.vocabulary import Operation, Unsupported, VendorRules


@dataclass(frozen=True)
class Target:
    app: str
    vendor: str
    capabilities: AbstractSet[Operation]
    rules: VendorRules
    rates: Mapping[str, float]  # calls per second per operation key, overrides applied
    # calls per window ("hour", "day") per operation key, overrides applied
    caps: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    who: str = ""  # "RongCloud (app rc)", for messages

    def require(self, operation: Operation) -> None:
        """Refuse a job before it starts when the vendor cannot do it."""
        if operation not in self.capabilities:
            raise Unsupported(self.vendor, operation)

    def batch_size(self, operation: Operation) -> int:
        return max(1, self.rules.batch_size.get(operation, 1))

    def estimate_seconds(self, operation: Operation, items: int) -> float | None:
        """Time to run `items` at the configured rate, in the vendor's batches."""
        rate = self.rates.get(operation.value)
        if not rate:
            return None
        return math.ceil(items / self.batch_size(operation)) / rate
