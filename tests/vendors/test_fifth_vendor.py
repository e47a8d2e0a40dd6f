"""What a fifth vendor writes: a config, its signing, its code table, its rules
and the operations it has, over the base's pipeline. Written here as a
throwaway vendor against a tiny server to prove the base is enough.

The hooks, in the order a new vendor module fills them:
- a frozen config dataclass (secrets with repr=False; `concurrency` for
  per-item calls in flight);
- `vendor`, `capabilities`, `rules` (VendorRules: fields, batch sizes, rates),
  `codes` (Codes: which reply codes are ok / exists / rate_limited /
  retryable / auth);
- `auth()`: an httpx.Auth that signs every request;
- the operations it supports, each a few lines over `call()`, `Batch` and
  `each()`;
- where the vendor differs: `reply_code` / `reply_message`, `classify`,
  `rules_for` (rules that depend on the config), `for_config` (a class per
  API version), `repeat_safe_ops`, `deduplicates_sends`;
- a sandbox (vendors/sandbox/) and one entry in vendors/registry.py.
"""

import hashlib
from dataclasses import dataclass, field, replace

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imshift.vendors.vocabulary import FieldRule, Operation, Outcome, Profile, VendorRules
from imshift.vendors.client import Batch, Codes, VendorClient
from imshift.vendors.operations import WorkItem, encode_profile, step


@dataclass(frozen=True)
class ExampleConfig:
    app_key: str
    app_secret: str = field(repr=False)
    base_url: str = "http://example.test"
    concurrency: int = 4


class ExampleAuth(httpx.Auth):
    def __init__(self, config: ExampleConfig):
        self.config = config

    def auth_flow(self, request):
        request.headers["X-Key"] = self.config.app_key
        request.headers["X-Sign"] = hashlib.sha1((self.config.app_secret + request.url.path)
                                                 .encode()).hexdigest()
        yield request


class ExampleClient(VendorClient):
    vendor = "example"
    capabilities = frozenset({Operation.REGISTER})
    rules = VendorRules(fields={"user_id": FieldRule(max_len=8, required=True), "name": FieldRule()},
                        batch_size={Operation.REGISTER: 1}, rates={Operation.REGISTER: 50})
    codes = Codes(ok=frozenset({0}), exists=frozenset({7}), auth=frozenset({401}))

    def auth(self):
        return ExampleAuth(self.config)

    async def register_users(self, profiles):
        batch = Batch(profiles, lambda p: "; ".join(self.rules.check_profile(p)) or None)

        async def one(index):
            p = profiles[index]
            result, body = await self.call(Operation.REGISTER, "POST", f"{self.config.base_url}/users",
                                           json={"id": p.user_id, "name": p.name}, expect=("uid",))
            return replace(result, data={"user_id": body["uid"]}) if result.succeeded else result

        batch.put(batch.valid, await self.each(batch.valid, one))
        return batch.done()


def example_server(secret: str):
    users: dict[str, str] = {}

    async def create(request: Request) -> Response:
        expected = hashlib.sha1((secret + request.url.path).encode()).hexdigest()
        if request.headers.get("X-Sign") != expected:
            return JSONResponse({"code": 401, "message": "bad signature"})
        body = await request.json()
        if body["id"] in users:
            return JSONResponse({"code": 7, "message": "exists", "uid": body["id"]})
        users[body["id"]] = body["name"]
        return JSONResponse({"code": 0, "uid": body["id"]})

    return Starlette(routes=[Route("/users", create, methods=["POST"])]), users


async def test_a_fifth_vendor_needs_only_its_own_hooks():
    app, users = example_server("s3cret")
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    client = ExampleClient(ExampleConfig("k", "s3cret", concurrency=1), http)  # in order: 0 before 2
    work = [WorkItem(0, "ann", encode_profile("Ann  ", "", {})),
            WorkItem(1, "much-too-long", encode_profile("X", "", {})),
            WorkItem(2, "ann", encode_profile("Ann  ", "", {}))]
    results = await step(Operation.REGISTER).run(client, work, {}, "k")
    assert [r.outcome for r in results] == [Outcome.OK, Outcome.REJECTED, Outcome.EXISTS]
    assert "user_id: 13 chars, at most 8" in results[1].message
    assert users == {"ann": "Ann  "}  # the name as written
    [refused] = await ExampleClient(ExampleConfig("k", "wrong"), http).register_users([Profile("bo")])
    assert refused.outcome is Outcome.AUTH and refused.code == "401"
