"""A one-endpoint vendor, enough to exercise what all sandboxes share
(windows, faults, counters) and whatever calls them."""

from starlette.responses import JSONResponse
from starlette.routing import Route

from imshift.vendors.sandbox.common import Sandbox


class TinySandbox(Sandbox):
    vendor = "tiny"

    def routes(self):
        return [Route("/call", self.call, methods=["POST"])]

    async def call(self, request):
        return await self.admit("register") or JSONResponse({"code": 200})

    def server_error(self):
        return JSONResponse({"code": 500}, status_code=500)

    def rate_limited(self, op):
        return JSONResponse({"code": 429}, status_code=429, headers={"Retry-After": "1"})
