"""The vendors by name: client class, config class, sandbox, sandbox port.

A fifth vendor is one entry here plus its modules in vendors/; nothing
outside vendors/ names a vendor. Sandboxes are imported only when asked
for, so using a client never imports the ASGI stack behind them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import httpx

from .vocabulary import VendorRules
from .client import Throttle, VendorClient
from .maxim import MaximClient, MaximConfig
from .netease import NeteaseClient, NeteaseConfig
from .openim import OpenIMClient, OpenIMConfig
from .rongcloud import RongCloudClient, RongCloudConfig


@dataclass(frozen=True)
class Vendor:
    name: str
    title: str
    client: type[VendorClient]  # the base for the vendor; for_config picks the served class
    config: type  # the client's config dataclass
    sandbox_path: str  # "module:Class" of its sandbox, under imshift.vendors.sandbox
    sandbox_port: int  # where `imshift sandbox` serves it by default

    @property
    def sandbox(self) -> type:
        module, name = self.sandbox_path.split(":")
        return getattr(importlib.import_module(f"{__package__}.sandbox.{module}"), name)

    def rules(self, config: Any) -> VendorRules:
        """The rules of an app configured with `config`."""
        return self.client.for_config(config).rules_for(config)

    def make_client(self, config: Any, http: httpx.AsyncClient, *, throttle: Throttle | None = None,
                    timeout: float = 10.0) -> VendorClient:
        return self.client.for_config(config)(config, http, throttle=throttle, timeout=timeout)


VENDORS: dict[str, Vendor] = {v.name: v for v in (
    Vendor("rongcloud", "RongCloud", RongCloudClient, RongCloudConfig, "rongcloud:RongCloudSandbox", 9001),
    Vendor("netease", "NetEase Yunxin", NeteaseClient, NeteaseConfig, "netease:NeteaseSandbox", 9002),
    Vendor("openim", "OpenIM", OpenIMClient, OpenIMConfig, "openim:OpenIMSandbox", 9003),
    Vendor("maxim", "Maxim", MaximClient, MaximConfig, "maxim:MaximSandbox", 9004),
)}


def vendor(name: str) -> Vendor:
    try:
        return VENDORS[name]
    except KeyError:
        raise ValueError(f"unknown vendor {name!r}: choose one of {', '.join(VENDORS)}") from None


def sandbox_apps(prefix: str) -> list[str]:
    """The names of the built-in sandbox apps, `prefix` + vendor name."""
    return [prefix + name for name in VENDORS]
