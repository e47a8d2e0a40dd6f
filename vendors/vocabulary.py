"""The vocabulary every vendor module speaks: operations, outcomes, inputs and rules.

Nothing here knows a vendor's name. A vendor module turns these inputs into
its signed calls and turns its replies back into `Result`s.
"""

from __future__ import annotations

import enum
import itertools
import operator
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence


class Operation(str, enum.Enum):
    """What imshift asks of a vendor. The values double as rate-limit keys."""

    REGISTER = "register"
    UPDATE_PROFILE = "update_profile"
    GET_PROFILES = "get_profiles"
    ISSUE_TOKEN = "issue_token"
    SEND = "send"  # one sender to many users, one-to-one messages
    SEND_GROUP = "send_group"
    BROADCAST = "broadcast"  # to every user of the app
    CREATE_GROUP = "create_group"
    ADD_MEMBERS = "add_members"
    IMPORT_FRIENDS = "import_friends"
    LIST_USERS = "list_users"  # can serve as a migration source without an export file
    LIST_GROUPS = "list_groups"  # ... and without a groups file: the app's groups with members
    # Read-backs a migration's verify stage makes: no job step runs them.
    GET_MEMBERS = "get_members"  # a group's member ids
    GET_FRIENDS = "get_friends"  # a user's friend ids

    def __str__(self) -> str:  # so f"{op}" reads "register", not "Operation.REGISTER"
        return self.value


class Outcome(str, enum.Enum):
    OK = "ok"
    EXISTS = "exists"  # idempotent success: it was already there
    RATE_LIMITED = "rate_limited"  # retry later and slow down
    RETRYABLE = "retryable"  # timeouts, 5xx, "busy"
    REJECTED = "rejected"  # bad input: never retry, tell the user why
    AUTH = "auth"  # bad key or signature: stop the job

    def __str__(self) -> str:
        return self.value

    @property
    def succeeded(self) -> bool:
        return self in (Outcome.OK, Outcome.EXISTS)

    @property
    def final(self) -> bool:
        """Whether retrying the same call could change the answer."""
        return self not in (Outcome.RATE_LIMITED, Outcome.RETRYABLE)


@dataclass(frozen=True)
class Result:
    """The outcome of one item of one call, with the vendor's own words kept.

    `data` may hold tokens or passwords, so it is left out of repr: a Result
    can be logged without leaking them.
    """

    outcome: Outcome
    code: str = ""  # the vendor's raw code ("1102", "http 503", "timeout")
    message: str = ""
    data: Mapping[str, Any] = field(default_factory=dict, repr=False)
    retry_after: float | None = None  # seconds, when the vendor said so
    # True when the request may have reached the vendor although no reply came
    # (read timeout, dropped connection): a non-idempotent send must not be
    # blindly repeated.
    maybe_delivered: bool = False

    @property
    def succeeded(self) -> bool:
        return self.outcome.succeeded


@dataclass(frozen=True)
class Profile:
    """A user account with its profile. `extra` holds vendor-specific fields
    (gender, email, mobile, birth, sign, ex, ...) by the vendor's field name."""

    user_id: str
    name: str = ""
    avatar: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Message:
    """A text message, or a custom one carried as a JSON object."""

    text: str | None = None
    custom: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if (self.text is None) == (self.custom is None):
            raise ValueError("a message has either text or custom content, not both or neither")


@dataclass(frozen=True)
class Group:
    group_id: str  # the app's id; vendors that assign their own return it in Result.data["group_id"]
    name: str
    owner: str
    members: Sequence[str] = ()
    # What a source's group listing reads besides (create calls do not send them).
    avatar: str = ""
    intro: str = ""


class Unsupported(Exception):
    """The vendor has no such operation; raised before any call is made."""

    def __init__(self, vendor: str, operation: Operation):
        super().__init__(f"{vendor} does not support {operation}")
        self.vendor = vendor
        self.operation = operation


class Missing(Unsupported):
    """The operation needs a parameter the request left empty (a Maxim
    broadcast's sender); raised before any job or call exists."""

    def __init__(self, who: str, operation: Operation, parameter: str):
        Exception.__init__(self, f"{who} needs a {parameter} for {operation}")
        self.vendor = who
        self.operation = operation
        self.parameter = parameter


@dataclass(frozen=True)
class FieldRule:
    """One field's limits as the vendor documents them."""

    max_len: int | None = None
    unit: Literal["chars", "bytes"] = "chars"
    pattern: str | None = None  # must match the whole value
    pattern_hint: str = ""  # says the pattern in words, for error messages
    required: bool = False
    choices: tuple[str, ...] | None = None
    # `pattern` compiled once (a planner checks every row of a million-row file): set
    # by __post_init__, not an argument, and left out of repr, == and hash.
    _fullmatch: Callable[[str], re.Match[str] | None] | None = field(
        default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_fullmatch",
                           re.compile(self.pattern).fullmatch if self.pattern is not None else None)

    def check(self, name: str, value: str) -> str | None:
        """The reason `value` is not acceptable for field `name`, or None."""
        if value == "":
            return f"{name}: required" if self.required else None
        if self.max_len is not None:
            size = len(value.encode()) if self.unit == "bytes" else len(value)
            if size > self.max_len:
                return f"{name}: {size} {self.unit}, at most {self.max_len} allowed"
        if self._fullmatch is not None and not self._fullmatch(value):
            return f"{name}: {value[:80]!r} is not allowed ({self.pattern_hint or self.pattern})"
        if self.choices is not None and value not in self.choices:
            return f"{name}: {value[:80]!r} is not one of {', '.join(self.choices)}"
        return None

    def check_many(self, name: str, values: Sequence[str], *, skip_empty: bool = False) -> dict[int, str]:
        """`check` of many values at once: {index: reason} for those that
        fail (`skip_empty`: an empty value is not looked at). Each test runs
        over the whole list in C (map, compress), and only the values one of
        them picks out go through `check`, so the reasons are its own."""
        every = range(len(values))
        picked: set[int] = set()
        if self.required and not skip_empty and "" in values:
            picked.update(itertools.compress(every, map("".__eq__, values)))
        if self.max_len is not None and values:
            sizes = list(map(len, values))  # characters: at most the bytes, at least a quarter
            if max(sizes) * (4 if self.unit == "bytes" else 1) > self.max_len:
                if self.unit == "bytes":
                    sizes = [len(v.encode()) if n * 4 > self.max_len else n for v, n in zip(values, sizes, strict=False)]
                picked.update(itertools.compress(every, map(self.max_len.__lt__, sizes)))
        if self._fullmatch is not None:
            picked.update(itertools.compress(every, map(operator.not_, map(self._fullmatch, values))))
        if self.choices is not None and not set(values) <= set(self.choices):
            choices = frozenset(self.choices)
            picked.update(itertools.compress(every, map(operator.not_, map(choices.__contains__, values))))
        found = {}
        for i in sorted(picked):
            value = values[i]
            if skip_empty and value == "":
                continue
            problem = self.check(name, value)
            if problem:
                found[i] = problem
        return found


# The longer windows a cap may count in, in seconds.
WINDOWS = {"minute": 60, "hour": 3600, "day": 86400}
PER = {"minute": "a minute", "hour": "an hour", "day": "a day"}  # "3 a day", in messages


@dataclass(frozen=True)
class Cap:
    """At most `calls` calls of one operation per `per` ("minute", "hour",
    "day"), beside its per-second rate: RongCloud's 3 broadcasts a day."""

    calls: int
    per: str

    def __post_init__(self) -> None:
        if self.per not in WINDOWS or self.calls < 0:
            raise ValueError(f"a cap is a count of 0 or more per {', '.join(WINDOWS)}")


CAP_CODE = "cap"  # Result.code of a call our own limiter kept back at a cap


class CapReached(Exception):
    """Raised by a throttle: the call would exceed a cap in the current
    window, so it is not sent. The message names the cap and when the next
    window opens."""


@dataclass(frozen=True)
class VendorRules:
    """A vendor's limits as data: fields, batch sizes, default rates and caps.

    `rates` are conservative default calls per second per operation (a
    configuration may override them); `batch_size` is the most items one call
    of that operation carries; `group_size` the most members a group may hold
    at the vendor by default, owner included (None: no documented limit).
    """

    fields: Mapping[str, FieldRule]
    batch_size: Mapping[Operation, int]
    rates: Mapping[Operation, float]
    # How the vendor compares ids (NetEase lower-cases accids, so `Bob` and
    # `bob` are one account); None compares them exactly as written.
    id_form: Callable[[str], str] | None = None
    group_size: int | None = None
    # Documented limits over longer windows, per operation (a configuration
    # may override them like rates; see workers/window_caps.py).
    caps: Mapping[Operation, tuple[Cap, ...]] = field(default_factory=dict)
    # Operations whose one item takes more than one call (Maxim's token: a
    # password reset, then a login), for estimates.
    calls_per_item: Mapping[Operation, int] = field(default_factory=dict)
    # Calls a batch of ids takes where the vendor caps more than their count
    # (NetEase's 1024-byte `members`): ids -> calls, as the client splits
    # them. Elsewhere a batch is `batch_size` ids a call. For estimates.
    split_calls: Mapping[Operation, Callable[[Sequence[str]], int]] = field(default_factory=dict)
    # add_members calls a group's create makes after its own call, for the
    # first members that call cannot carry (NetEase's 1024-byte `members`,
    # RongCloud's 1000 userIds with the owner): (owner, members) -> calls,
    # as the client splits them. None: the create is one call. For estimates.
    adds_in_create: Callable[[str, Sequence[str]], int] | None = None
    # True where each user keeps their own roster, so importing a friendship
    # writes both sides: a call per owner's run of pairs, then one a pair
    # for the other side (the operation table's import_friends).
    friends_one_way: bool = False
    # The parameters an operation cannot go without besides its items, as
    # the vendor's API requires them ({BROADCAST: ("sender",)}): checked
    # before a job exists.
    needs: Mapping[Operation, tuple[str, ...]] = field(default_factory=dict)

    def id_key(self, user_id: str) -> str:
        """The form under which the vendor tells two ids apart."""
        return self.id_form(user_id) if self.id_form is not None else user_id

    def check_profile(self, profile: Profile) -> list[str]:
        """Every reason the vendor would refuse this profile (empty when fine)."""
        values = {"user_id": profile.user_id, "name": profile.name, "avatar": profile.avatar}
        errors = []
        for key, value in profile.extra.items():
            if key in values or key not in self.fields:
                errors.append(f"{key}: not a profile field this vendor accepts")
            else:
                values[key] = value
        for key, value in values.items():
            rule = self.fields.get(key)
            if rule is None:
                if value:
                    errors.append(f"{key}: not a profile field this vendor accepts")
                continue
            problem = rule.check(key, value)
            if problem:
                errors.append(problem)
        return errors
