"""The vendor app a job runs against, as the producers see it: its client
class (rules, capabilities) and its effective rates. No credentials."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from imshift.vendors.base import Operation, Unsupported
from imshift.vendors.client import VendorClient


@dataclass(frozen=True)
class Target:
    app: str
    client: type[VendorClient]
    rates: Mapping[str, float]  # calls per second per operation key, overrides applied

    @property
    def vendor(self) -> str:
        return self.client.vendor

    def require(self, operation: Operation) -> None:
        """Refuse a job before it starts when the vendor cannot do it."""
        if not self.client.supports(operation):
            raise Unsupported(self.vendor, operation)

    def estimate_seconds(self, operation: Operation, items: int) -> float | None:
        """Time to run `items` at the configured rate, in the vendor's batches."""
        rate = self.rates.get(operation.value)
        if not rate:
            return None
        batch = max(1, self.client.rules.batch_size.get(operation, 1))
        return math.ceil(items / batch) / rate
