"""OpenIM v3 user ids planned by the server's own rule: every character a
Unicode letter (Go's unicode.IsLetter), a decimal digit (unicode.IsDigit) or
'_' (protocol datautil.IsLegalUserID), no length limit, compared byte-exact
(Mongo's unique index on user_id). The rules and the sandbox, reached over
in-process HTTP with the client's checks out of the way, agree on each id."""

import asyncio

import httpx
import pytest

from imshift.jobs import kinds
from imshift.vendors.openim_v3 import RULES_V3
from imshift.vendors.sandbox.openim import OpenIMSandbox

from tests.jobs.helpers import context

IDS = {
    "caf\u00e9": True,  # composed
    "\uff43\uff41\uff46\u00e9": True,  # full-width letters: letters, and another id than the composed one
    "cafe\u0301": False,  # a combining accent (Mn) is no letter
    "x\u00b2": False,  # '²' (No): Python's \w takes it, the server does not
    "\u216b": False,  # 'Ⅻ' (Nl)
    "\u3007": False,  # '〇' (Nl)
    "\u0663\u0664": True,  # Arabic-Indic digits (Nd)
    "\u4e00\u4e8c": True,  # CJK letters (Lo)
    "a" * 65: True,  # no length limit in v3
    "a:b": False,
    "a b": False,
}


async def server_accepts(box: OpenIMSandbox, user_id: str) -> bool:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=box.app), base_url="http://t") as http:
        token = (await http.post("/auth/get_admin_token", json={"secret": box.secret, "userID": "imAdmin"},
                                 headers={"operationID": "op"})).json()["data"]["token"]
        reply = (await http.post("/user/user_register", json={"users": [{"userID": user_id, "nickname": "N"}]},
                                 headers={"operationID": "op", "token": token})).json()
    assert reply["errCode"] in (0, 1001), reply
    return reply["errCode"] == 0


@pytest.mark.parametrize("user_id, legal", IDS.items(), ids=[ascii(i)[:20] for i in IDS])
def test_the_rules_refuse_exactly_what_the_server_refuses(user_id, legal):
    assert asyncio.run(server_accepts(OpenIMSandbox(), user_id)) is legal
    assert (RULES_V3.fields["user_id"].check("user_id", user_id) is None) is legal
    assert RULES_V3.id_key(user_id) == user_id  # byte-exact: no folding


def test_planning_keeps_apart_what_the_server_keeps_apart_and_refuses_what_it_refuses(tmp_path):
    ctx = context(f"sqlite:///{tmp_path / 'db.sqlite'}", apps={"new": {"vendor": "openim", "sandbox": True}})
    users = tmp_path / "u.csv"
    users.write_text("user_id,name\n" + "".join(f"{i},N\n" for i in IDS), encoding="utf-8")
    r = kinds.plan_user_migration(ctx.engine, ctx.target("new"), users, source_app=None,
                                  chunk_size=100).report
    assert (r.pending, r.invalid, r.duplicates) == (sum(IDS.values()), len(IDS) - sum(IDS.values()), 0)
    ctx.engine.dispose()
