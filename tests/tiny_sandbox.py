"""A one-endpoint vendor, enough to exercise what all sandboxes share
(windows, faults, counters) and whatever calls them."""

from imshift.vendors.sandbox.common import Endpoint, Sandbox


class TinySandbox(Sandbox):
    vendor = "tiny"

    def endpoints(self):
        return [Endpoint("/call", "register", lambda params, call: {})]
