"""The four vendors by name: client class, sandbox class, sandbox port."""

from __future__ import annotations

from dataclasses import dataclass

from .client import VendorClient
from .maxim import MaximClient
from .netease import NeteaseClient
from .openim import OpenIMClient
from .rongcloud import RongCloudClient
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
    sandbox: type[Sandbox]
    sandbox_port: int  # where `imshift sandbox` serves it by default


VENDORS: dict[str, Vendor] = {v.name: v for v in (
    Vendor("rongcloud", "RongCloud", RongCloudClient, RongCloudSandbox, 9001),
    Vendor("netease", "NetEase Yunxin", NeteaseClient, NeteaseSandbox, 9002),
    Vendor("openim", "OpenIM", OpenIMClient, OpenIMSandbox, 9003),
    Vendor("maxim", "Maxim", MaximClient, MaximSandbox, 9004),
)}


def vendor(name: str) -> Vendor:
    try:
        return VENDORS[name]
    except KeyError:
        raise ValueError(f"unknown vendor {name!r}: choose one of {', '.join(VENDORS)}") from None
