"""The vendor app a job runs against, as the producers see it: its vendor,
what it supports, its rules and its effective rates and caps, all from the configured
app (an API version or batch-size override changes them). No credentials."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import AbstractSet, Mapping, Sequence

from imshift.vendors.operations import STEPS
from imshift.vendors.vocabulary import Missing, Operation, Unsupported, VendorRules


def missing_text(exc: Missing) -> str:
    """A missing parameter as the command line names it: "Maxim (app mx): broadcast needs --sender"."""
    return f"{exc.vendor}: {exc.operation} needs --{exc.parameter.replace('_', '-')}"


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

    def require(self, operation: Operation, params: Mapping[str, object] | None = None) -> None:
        """Refuse a job before it exists when the vendor cannot do it, or
        (given the job's `params`) when one its vendor needs is empty."""
        if operation not in self.capabilities:
            raise Unsupported(self.vendor, operation)
        if params is None:
            return
        for name in self.rules.needs.get(operation, ()):
            if not params.get(name):
                raise Missing(self.who or self.vendor, operation, name)

    def batch_size(self, operation: Operation) -> int:
        return max(1, self.rules.batch_size.get(operation, 1))

    def calls(self, operation: Operation, items: int) -> int:
        """Vendor calls `items` take, as the operation table and the client
        make them: a batch a call, or one call an item (a group's create),
        times the calls one item costs (Maxim's token: two)."""
        per_call = 1 if STEPS.get(operation) and STEPS[operation].per_item else self.batch_size(operation)
        return math.ceil(items / per_call) * self.rules.calls_per_item.get(operation, 1)

    def calls_for_ids(self, operation: Operation, ids: Sequence[str]) -> int:
        """Vendor calls one call's worth of ids takes (a group's members, which
        the client adds in batches of that group alone), as the client splits them."""
        split = self.rules.split_calls.get(operation)
        calls = split(ids) if split else math.ceil(len(ids) / self.batch_size(operation))
        return calls * self.rules.calls_per_item.get(operation, 1)

    def adds_in_create(self, owner: str, members: Sequence[str]) -> int:
        """add_members calls a group's create makes after its own call, for
        the first members that call cannot carry (the vendor's rules say)."""
        adds = self.rules.adds_in_create
        return adds(owner, members) if adds else 0

    def estimate_seconds(self, operation: Operation, items: int) -> float | None:
        """Time to run `items` at the configured rate, as `calls` makes them."""
        rate = self.rates.get(operation.value)
        if not rate:
            return None
        return self.calls(operation, items) / rate
