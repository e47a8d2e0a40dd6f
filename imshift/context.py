"""Wires settings to the library: engine, broker, vendor clients, runtime.

This is the one place that knows which configured app is which vendor and
holds its credentials; producers see a `Target` (no credentials) and
workers a client factory.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography.fernet import Fernet
from sqlalchemy.engine import make_url
from pydantic import TypeAdapter, ValidationError

from imshift.jobs.target import Target
from imshift.logs import secret_fields
from imshift.models import make_engine
from imshift.settings import AppSettings, Settings, config_path
from imshift.vendors.vocabulary import VendorRules
from imshift.vendors.client import Throttle, VendorClient
from imshift.vendors.http import http_client
from imshift.vendors.registry import Vendor, vendor
from imshift.workers.actors import declare
from imshift.workers.broker import make_broker
from imshift.workers.ratelimit import RateLimiter
from imshift.workers.runtime import Runtime, Tuning, configure


def vendor_config(app: str, config_class: type, fields: dict[str, Any]) -> Any:
    """The vendor's config dataclass from settings values, typed (environment
    values arrive as strings; lists as JSON). Errors name the field, never
    the value: it may be a secret."""
    values = {k: json.loads(v) if isinstance(v, str) and v[:1] in ("[", "{") else v
              for k, v in fields.items()}
    unknown = set(values) - {f.name for f in dataclasses.fields(config_class)}
    if unknown:
        raise ValueError(f"app {app!r}: {', '.join(sorted(unknown))} not a setting of "
                         f"{config_class.__name__} (nor vendor, rates, caps, sandbox)")
    try:
        return TypeAdapter(config_class).validate_python(values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '?'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"app {app!r} settings do not fit {config_class.__name__}: {problems}") from None


@dataclasses.dataclass(frozen=True)
class App:
    """A configured app resolved from the settings: its vendor, its config
    (credentials included: it stays in this process), and the rules, rates
    and caps that planning, estimates and workers all use."""

    name: str
    settings: AppSettings
    vendor: Vendor
    config: Any
    rules: VendorRules
    rates: dict[str, float]  # the vendor's default rates, with the app's own overrides
    caps: dict[str, dict[str, int]]  # {"broadcast": {"hour": 2, "day": 3}}; the app's 0 lifts one

    @property
    def who(self) -> str:
        """The app as a cap's refusal names it: "RongCloud (app rc)"."""
        return f"{self.vendor.title} (app {self.name})"

    @property
    def client_class(self) -> type[VendorClient]:
        """The vendor's client class that serves this config (an API version may pick it)."""
        return self.vendor.client.for_config(self.config)

    @property
    def api(self) -> str:
        """"OpenIM v3": the vendor, with the API version the app speaks where it has one."""
        return f"{self.vendor.title} {getattr(self.client_class, 'version', '')}".strip()


def _enforce(box: Any, app: App) -> Any:
    """A sandbox holds the app's rates and caps, as the vendor holds its limits."""
    box.rate_limits.update(app.rates)
    box.caps = app.caps
    return box


class SetupError(Exception):
    """Settings or services a command cannot work with; the message names the fix."""


def _stamp(path: str) -> tuple[int, int] | None:
    """What changes when the config file is edited (None: no file)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _sqlite_path(database_url: str) -> str | None:
    """The file of a SQLite URL ("" for an in-memory database); None if not SQLite."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    return (url.database or "") if url.get_backend_name() == "sqlite" else None


class Context:
    def __init__(self, settings: Settings | None = None):
        # Settings read from the config file are read again when it changes
        # (refresh): a long-lived process (scheduler, serve, worker) sees an
        # app removed or changed without a restart. Given settings stay.
        self._file = None if settings is not None else config_path()
        self._stamp = _stamp(self._file) if self._file else None
        self.settings = settings or Settings()
        self.sandboxes: dict[str, Any] = {}  # built-in sandboxes, by app name
        self._apps: dict[str, App] = {}  # resolved as first used

    def refresh(self) -> None:
        """Read the apps again if the config file changed since they were
        read (one stat when it did not). Raises SettingsError for a file that
        no longer reads; the old apps are not used meanwhile."""
        if self._file is None or _stamp(self._file) == self._stamp:
            return
        stamp = _stamp(self._file)
        self.settings.apps = Settings().apps  # the apps only: the database and broker stay
        self._apps.clear()
        self._stamp = stamp

    @property
    def embedded(self) -> bool:
        """No Redis: work runs inside the command's own process."""
        return not self.settings.redis_url

    def check(self) -> None:
        """Settings that cannot work whatever the command: refused before
        anything is created. Raises SetupError."""
        path = _sqlite_path(self.settings.database_url)
        if self.settings.redis_url and path is not None and not path.startswith("/"):
            where = f"the SQLite file {path!r} in the current folder" if path else "an in-memory SQLite"
            raise SetupError(
                f"REDIS_URL is set, so worker processes run the jobs, but DATABASE_URL is {where}: "
                "each process would open its own database and nothing would finish. Set "
                "DATABASE_URL to a PostgreSQL database every worker reaches (or an absolute "
                "sqlite:////path for workers on this machine), or unset REDIS_URL to run jobs "
                "inside the command")
        self.cipher  # noqa: B018  (a malformed token key fails here)

    def check_broker(self) -> None:
        """With Redis: that it answers, before any job is queued. Raises SetupError."""
        redis_url = self.settings.redis_url
        if not redis_url:  # embedded
            return
        import redis

        url = urlsplit(redis_url)
        where = f"{url.hostname or 'localhost'}:{url.port or 6379}"  # never the password
        try:
            client = redis.Redis.from_url(redis_url, socket_connect_timeout=3,
                                          socket_timeout=3)
            try:
                client.ping()
            finally:
                client.close()
        except (redis.RedisError, OSError) as exc:
            raise SetupError(f"Redis at {where} (REDIS_URL) does not answer: "
                             f"{type(exc).__name__}; start it, or unset REDIS_URL to run jobs "
                             "inside the command") from None

    @functools.cached_property
    def engine(self):
        return make_engine(self.settings.database_url)

    def close(self) -> None:
        """Close the database pool, if one was opened."""
        if "engine" in self.__dict__:
            self.__dict__.pop("engine").dispose()

    @functools.cached_property
    def broker(self):
        broker = make_broker(self.settings.redis_url,
                             heartbeat_timeout_ms=int(self.settings.requeue_after * 1000))
        declare(broker, time_limit_ms=int(self.settings.lease_seconds * 4 * 1000))
        return broker

    def app(self, name: str) -> App:
        """The configured app `name`, resolved once (again after a refresh).
        Raises ValueError for an unknown app or settings that do not fit its vendor."""
        if name not in self._apps:
            self._apps[name] = self._resolve(name)
        return self._apps[name]

    def _resolve(self, name: str) -> App:
        settings = self.settings.app(name)
        v = vendor(settings.vendor)
        fields = settings.vendor_config()
        box = None
        if settings.sandbox:
            # A built-in sandbox app gets the sandbox's demo credentials, with
            # the app's other settings (an API version, batch sizes) applied.
            if name not in self.sandboxes:
                box = self.sandboxes[name] = v.sandbox()
            demo = self.sandboxes[name].config(f"http://{name}.internal")
            fields = {**{f.name: getattr(demo, f.name) for f in dataclasses.fields(demo)}, **fields}
        config = vendor_config(name, v.config, fields)
        rules = v.rules(config)
        if settings.group_size is not None:
            rules = dataclasses.replace(rules, group_size=settings.group_size)
        rates = {op.value: rate for op, rate in rules.rates.items()}
        rates.update(settings.rates)
        caps = {op.value: {c.per: c.calls for c in cs} for op, cs in rules.caps.items()}
        for key, windows in settings.caps.items():
            for per, n in windows.items():
                caps.setdefault(key, {})[per] = n
        caps = {key: {per: n for per, n in windows.items() if n > 0} for key, windows in caps.items()}
        app = App(name, settings, v, config, rules, rates,
                  {key: windows for key, windows in caps.items() if windows})
        if box is not None:
            _enforce(box, app)
        return app

    def config(self, app: str) -> Any:
        """The vendor config of a configured app (credentials included: it
        stays in this process)."""
        return self.app(app).config

    def rules(self, app: str) -> VendorRules:
        return self.app(app).rules

    def rates(self, app: str) -> dict[str, float]:
        return self.app(app).rates

    def caps(self, app: str) -> dict[str, dict[str, int]]:
        return self.app(app).caps

    def target(self, app: str) -> Target:
        self.refresh()
        a = self.app(app)
        return Target(app, a.vendor.name, a.client_class.capabilities, a.rules, a.rates, a.caps,
                      a.who)

    def sandbox(self, app: str) -> Any:
        """The built-in sandbox behind `sandbox-<vendor>`: it enforces the
        vendor's default rates, as the real vendor enforces its limits."""
        if app not in self.sandboxes:
            a = self.app(app)  # a sandbox app makes its sandbox as it is resolved
            if app not in self.sandboxes:
                self.sandboxes[app] = _enforce(a.vendor.sandbox(), a)
        return self.sandboxes[app]

    def client(self, app: str, throttle: Throttle | None = None) -> VendorClient:
        self.refresh()
        a = self.app(app)
        if a.settings.sandbox:
            http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.sandbox(app).app))
        else:
            http = http_client(max_connections=self.settings.concurrency)
        return a.vendor.make_client(a.config, http, throttle=throttle,
                                    timeout=self.settings.request_timeout)

    def secrets(self) -> list[str]:
        """Every configured secret value, for the log redaction filter."""
        values = [self.settings.token_key.get_secret_value()] if self.settings.token_key else []
        for name, app in self.settings.apps.items():
            if not app.sandbox:
                try:
                    values += secret_fields(vendor_config(name, vendor(app.vendor).config,
                                                          app.vendor_config()))
                except ValueError:
                    continue  # reported when the app is used
        return values

    @functools.cached_property
    def cipher(self) -> Fernet | None:
        key = self.settings.token_key
        if not key or not key.get_secret_value():
            return None
        try:
            return Fernet(key.get_secret_value().encode())
        except ValueError:  # the message never holds the key
            raise SetupError("IMSHIFT_TOKEN_KEY is not a valid key: it must be the 44 characters "
                             "`imshift keygen` prints (the same key the tokens were stored with)") from None

    def register_secrets(self, app: str) -> frozenset[str]:
        """What registering at the app's vendor returns that is kept only
        encrypted ("token", "password"), and so is dropped without a key."""
        return self.app(app).client_class.register_secrets

    def limits_folder(self) -> Path:
        """Without Redis, where the commands that share this database share
        their rate-limit schedules (one folder per database and OS user)."""
        url = make_url(self.settings.database_url)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            url = url.set(database=str(Path(url.database).resolve()))
        digest = hashlib.sha256(url.render_as_string(hide_password=True).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"imshift-limits-{os.getuid()}" / digest

    def limiter(self) -> RateLimiter:
        """A rate limiter on the schedules every worker and command of these
        settings share (Redis, or the limits folder without it)."""
        redis = None
        if self.settings.redis_url:
            import redis.asyncio as aioredis
            redis = aioredis.from_url(self.settings.redis_url)
        return RateLimiter(redis=redis, margin=self.settings.rate_margin,
                           guard=self.settings.rate_guard,
                           shared_dir=None if redis else self.limits_folder())

    def throttle(self, app: str, limiter: RateLimiter) -> Throttle:
        """The app's throttle: its rates and caps, held with everyone's calls."""
        a = self.app(app)
        return limiter.throttle_for(app, a.rates, caps=a.caps, who=a.who)

    @functools.cached_property
    def runtime(self) -> Runtime:
        limiter = self.limiter()
        s = self.settings
        tuning = Tuning(chunk_size=s.chunk_size, lease_seconds=s.lease_seconds,
                        max_attempts=s.max_attempts, concurrency=s.concurrency,
                        stale_after=s.stale_after, claim_seconds=s.claim_seconds)

        def clients(app: str) -> VendorClient:
            return self.client(app, self.throttle(app, limiter))

        def stamp() -> Any:
            self.refresh()  # raises SettingsError for a file that no longer reads: the job stops on it
            return self._stamp

        return configure(Runtime(self.engine, self.broker, clients, limiter, self.cipher, tuning,
                                 settings_stamp=stamp if self._file else None))
