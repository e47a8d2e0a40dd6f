"""The four vendors by name: client class, sandbox class, sandbox port."""

from __future__ import annotations

from dataclasses import dataclass

from .client import VendorClient
from .maxim import MaximClient, MaximConfig
from .netease import NeteaseClient, NeteaseConfig
from .openim import OpenIMClient, OpenIMConfig
from .rongcloud import RongCloudClient, RongCloudConfig
from .sandbox.common import Sandbox
from .sandbox.maxim import MaximSandbox
from .sandbox.netease import NeteaseSandbox
from .sandbox.openim import OpenIMSandbox
from .sandbox.rongcloud import RongCloudSandbox


@dataclass(frozen=True)
class Vendor:
    name: str
    title: str
    client: type[VendorClient]
    config: type  # the client's config dataclass
    sandbox: type[Sandbox]
    sandbox_port: int  # where `imshift sandbox` serves it by default


VENDORS: dict[str, Vendor] = {v.name: v for v in (
    Vendor("rongcloud", "RongCloud", RongCloudClient, RongCloudConfig, RongCloudSandbox, 9001),
    Vendor("netease", "NetEase Yunxin", NeteaseClient, NeteaseConfig, NeteaseSandbox, 9002),
    Vendor("openim", "OpenIM", OpenIMClient, OpenIMConfig, OpenIMSandbox, 9003),
    Vendor("maxim", "Maxim", MaximClient, MaximConfig, MaximSandbox, 9004),
)}


def vendor(name: str) -> Vendor:
    try:
        return VENDORS[name]
    except KeyError:
        raise ValueError(f"unknown vendor {name!r}: choose one of {', '.join(VENDORS)}") from None
