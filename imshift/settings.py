"""Settings from environment variables and an optional TOML file.

Vendor app credentials live only here: jobs name an app, never carry its
keys. Apps are configured in `imshift.toml` (or the file `IMSHIFT_CONFIG` names),
one table per app naming its vendor (`imshift vendors` lists them) and the
fields of that vendor's config class (the README shows an example),
or by environment, e.g. `IMSHIFT_APPS__NEW__APP_SECRET=...`. Every app
field other than `vendor`, `rates`, `caps`, `group_size` and `sandbox` goes to the vendor's config class.

A setting that cannot be right (a key no vendor or operation has, a value of
the wrong type, a missing vendor) is refused when the settings are read, in
one line naming the key, where it came from (the file or the environment
variable) and the valid choices: a typo must not pass as a default.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import (BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict,
                               TomlConfigSettingsSource)

from imshift.workers import ratelimit
from imshift.workers.runtime import Tuning

SANDBOX_PREFIX = "sandbox-"  # "sandbox-<vendor>": the built-in in-process sandbox of that vendor
APP_FIELDS = ("vendor", "rates", "caps", "group_size", "sandbox")  # the rest go to the vendor's config
# Rate keys that are no operation: OpenIM's admin-token fetch (vendors/openim_auth.py).
OTHER_RATE_KEYS = ("auth",)


class SettingsError(ValueError):
    """A setting that cannot be right: one line naming it, where it came from and the choices."""


def config_path() -> str:
    return os.environ.get("IMSHIFT_CONFIG", "imshift.toml")


def origin(*path: str, under: bool = False) -> str:
    """Where the setting at `path` came from: the environment variable that
    set it (or a table holding it), else the config file. `under`: any
    variable below `path` (a table the variables made key by key)."""
    names = {k.upper(): k for k in os.environ}
    wanted = ["IMSHIFT_" + "__".join(path[:i]).upper() for i in range(len(path), 0, -1)]
    for name in wanted:
        if name in names:
            return f"environment variable {names[name]}"
    if under:
        for name in sorted(names):
            if name.startswith(wanted[0] + "__"):
                return f"environment variable {names[name]}"
    return config_path() if Path(config_path()).is_file() else "the settings given"


def _refusal(exc: ValidationError) -> SettingsError:
    """The first problem pydantic found, as one line (never the value: it may be a secret)."""
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"] if part != "[key]"]
    key = ".".join(loc)
    if error["type"] == "missing" and len(loc) == 3 and loc[0] == "apps" and loc[2] == "vendor":
        from imshift.vendors.registry import VENDORS

        given = error.get("input")
        strays = sorted(k for k in given if k not in APP_FIELDS) if isinstance(given, dict) else []
        has = f" ({', '.join(strays)}: not a setting)" if strays else ""
        return SettingsError(f"app {loc[1]!r} ({origin(*loc[:2], under=True)}) names no vendor{has}: "
                             f"set vendor to one of {', '.join(VENDORS)}")
    return SettingsError(f"setting {key} ({origin(*loc)}): {error['msg']}")


def _check_app(name: str, app: AppSettings) -> None:
    """Keys pydantic lets through: the vendor, its config's fields, and the
    operations that rates and caps name."""
    from imshift.vendors.registry import VENDORS
    from imshift.vendors.vocabulary import Operation

    v = VENDORS.get(app.vendor)
    if v is None:
        raise SettingsError(f"apps.{name}.vendor ({origin('apps', name, 'vendor')}) is {app.vendor!r}, "
                            f"not a vendor: choose one of {', '.join(VENDORS)}")
    fields = [f.name for f in dataclasses.fields(v.config)]
    for key in app.vendor_config():
        if key not in fields:
            raise SettingsError(f"apps.{name}.{key} ({origin('apps', name, key)}) is not a setting of a "
                                f"{v.title} app: choose from {', '.join(fields + list(APP_FIELDS))}")
    known = {op.value for op in Operation} | set(OTHER_RATE_KEYS)
    for table in ("rates", "caps"):
        for key in getattr(app, table):
            if key not in known:
                operations = sorted(op.value for op in v.client.capabilities)
                where = origin("apps", name, table, key, under=True)
                raise SettingsError(f"apps.{name}.{table}.{key} ({where}) "
                                    f"is not an operation of {v.title}: choose from {', '.join(operations)}")


class AppSettings(BaseModel):
    model_config = ConfigDict(extra="allow")

    vendor: str
    rates: dict[str, float] = Field(default_factory=dict)  # calls/s per operation, over the defaults
    # calls per window per operation, over the vendor's documented caps (0: no cap),
    # e.g. {"broadcast": {"hour": 5, "day": 10}}
    caps: dict[str, dict[Literal["minute", "hour", "day"], int]] = Field(default_factory=dict)
    # The most members a group may hold at this app, owner included, over the
    # vendor's default (NetEase's 200; OpenIM and Maxim document none): a
    # plan's or a deployment's own limit. Planning refuses a group over it.
    group_size: int | None = Field(None, ge=2)
    sandbox: bool = False  # the built-in in-process sandbox of `vendor` instead of the real service

    def vendor_config(self) -> dict[str, Any]:
        """The fields for the vendor's own config class."""
        return dict(self.model_extra or {})

    def __repr__(self) -> str:  # never print credentials
        return (f"AppSettings(vendor={self.vendor!r}, sandbox={self.sandbox}, "
                f"fields={sorted(self.vendor_config())})")

    __str__ = __repr__


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMSHIFT_", env_nested_delimiter="__",
                                      extra="ignore", populate_by_name=True)

    database_url: str = Field("sqlite:///imshift.db",
                              validation_alias=AliasChoices("IMSHIFT_DATABASE_URL", "DATABASE_URL"))
    redis_url: str | None = Field(None, validation_alias=AliasChoices("IMSHIFT_REDIS_URL", "REDIS_URL"))
    token_key: SecretStr | None = None  # Fernet key: tokens are stored encrypted with it
    apps: dict[str, AppSettings] = Field(default_factory=dict)

    # The engine's defaults are the workers' own (Tuning, the rate limiter's).
    chunk_size: int = Tuning.chunk_size  # items per queue message
    lease_seconds: float = Tuning.lease_seconds  # a claim holds this long before another worker may take over
    max_attempts: int = Tuning.max_attempts  # retryable failures per item before it ends `failed`
    concurrency: int = Tuning.concurrency  # vendor calls in flight per worker process
    rate_margin: float = ratelimit.MARGIN  # stay this share under each vendor limit (windows not on the epoch seconds)
    rate_guard: float = ratelimit.GUARD  # seconds left free at each end of a vendor's one-second window
    claim_seconds: float = Tuning.claim_seconds  # a process claims at most this many seconds of quota ahead
    stale_after: float = Tuning.stale_after  # a running job with no progress this long gets its chunks re-sent
    requeue_after: float = 60.0  # a dead worker's unacknowledged messages return after this (Redis)
    request_timeout: float = 15.0

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _refusal(exc) from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{config_path()} is not TOML: {exc}") from None
        for name, app in self.apps.items():
            _check_app(name, app)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource):
        toml = TomlConfigSettingsSource(settings_cls, config_path())
        return init_settings, env_settings, toml, file_secret_settings

    def app(self, name: str) -> AppSettings:
        """The named app; `sandbox-<vendor>` is the built-in sandbox."""
        if name in self.apps:
            return self.apps[name]
        if name.startswith(SANDBOX_PREFIX):
            return AppSettings(vendor=name[len(SANDBOX_PREFIX):], sandbox=True)
        from imshift.vendors.registry import sandbox_apps

        known = ", ".join(sorted(self.apps)) or "none configured"
        if "IMSHIFT_CONFIG" in os.environ and not Path(config_path()).is_file():
            known += f"; IMSHIFT_CONFIG names {config_path()}, which does not exist"
        raise ValueError(f"no vendor app named {name!r} (apps: {known}; the built-in sandboxes "
                         f"are {', '.join(sandbox_apps(SANDBOX_PREFIX))})")
