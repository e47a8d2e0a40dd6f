"""The `imshift` command as a user runs it."""

import asyncio
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from typer.testing import CliRunner

from imshift.cli import app
from imshift.vendors.vocabulary import Outcome, Profile
from imshift.vendors.http import http_client
from imshift.vendors.registry import VENDORS
from testsupport import free_port

runner = CliRunner()


def test_vendors_prints_the_capability_table():
    result = runner.invoke(app, ["vendors"])
    assert result.exit_code == 0, result.output
    for v in VENDORS.values():
        assert v.title in result.output
    assert "register" in result.output and "import_friends" in result.output


def test_sandbox_refuses_an_unknown_vendor():
    result = runner.invoke(app, ["sandbox", "--vendor", "wechat"])
    assert result.exit_code != 0
    assert "unknown vendor 'wechat'" in result.output


def test_demo_migrates_reports_bad_rows_and_sends(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the demo makes its workdir
    result = runner.invoke(app, ["demo", "--users", "150"])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # undo rich's line wrapping
    assert "146 to migrate, 3 invalid, 1 duplicate rows" in output
    assert "finished, 150/150 items done" in output
    assert "ok=146 rejected=4" in output
    assert "146 of 146 migrated accounts present" in output
    assert "0 over the limit" in output
    assert "145 messages delivered in 1 batch call(s)" in output
    # A whole run into Maxim: every stage, each later one through the id map.
    assert "run R1: rongcloud-app -> maxim-app, finished" in output
    for stage in ("accounts", "friends", "groups", "members", "tokens", "verify"):
        assert f"│ {stage} " in result.output
    assert "so 12 friends items naming them were skipped, 3 verify items naming them were skipped" \
        in output  # the pairs and checks naming the refused rows
    assert "ok=295 skipped=3" in output  # verify read everything else back
    mapped = re.search(r"user_000000 -> (\d+)", output)
    assert mapped and mapped.group(1) != "user_000000"  # Maxim's own numeric id
    assert f"from user_000000 (Maxim id {mapped.group(1)}) to 145 of them" in output
    # A broadcast schedule and a recurring one (removed after its first fire): one fire each,
    # each fire's job finished (the history tables).
    assert len(re.findall(r"│ fired │ \d+ │ finished │", output)) == 2, output
    # Nothing left behind; the last line names the next command.
    assert not list(tmp_path.glob("imshift-demo-*"))
    assert output.rstrip().endswith("--users users.csv --dry-run`")
    # What the Maxim sandbox received, as the demo reads it back from the sandbox.
    assert "1 broadcast call(s), the announcement in 145 inboxes" in output
    assert "the reminder in 3 inboxes (3 recipients, one fire)" in output
    assert output.count("fired as job") == 2
    assert "removed schedule 2 after its first fire" in output
    assert output.count("fires of schedule") == 2
    # Clients on both vendors crossing the bridge both ways, shown by each vendor's own ids.
    assert "bridge B1 over R1, both ways" in output
    assert "the bridge part stopped" not in output
    assert re.search(rf"sent on RongCloud: user_000000 -> user_000001: .* shown on Maxim: "
                     rf"{mapped.group(1)} -> \d+, [\d.]+ s later", output)
    assert re.search(rf"sent on Maxim: \d+ -> {mapped.group(1)}: .* shown on RongCloud: "
                     r"user_000001 -> user_000000, [\d.]+ s later", output)
    assert re.search(r"shown on Maxim: \d+ -> group \d+, [\d.]+ s later \(for \d+, \d+\)", output)
    assert "shown on RongCloud: user_000007 -> group team_000" in output
    for way in ("rongcloud-app -> maxim-app", "maxim-app -> rongcloud-app"):  # each once: no echo relayed
        assert re.search(rf"{way}: 2 relayed, 0 pending, 0 failed; lag p50 \d+ ms", output), output



def wait_for_port(port: int, process: subprocess.Popen, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"sandbox exited: {process.stdout.read()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listened on {port} within {seconds} s")


@pytest.mark.loopback
@pytest.mark.parametrize("name", list(VENDORS))
def test_one_command_serves_a_sandbox_on_loopback(name):
    port = free_port()
    command = [sys.executable, "-m", "imshift.cli", "sandbox", "--vendor", name, "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "COLUMNS": "200"})
    try:
        wait_for_port(port, process)
        vendor = VENDORS[name]
        config = vendor.sandbox().config(f"http://127.0.0.1:{port}")  # the same demo credentials

        async def register():
            async with http_client() as http:
                return await vendor.client(config, http).register_users([Profile("cli_user_1", "Lí")])

        [result] = asyncio.run(register())
        assert result.outcome is Outcome.OK, result
    finally:
        process.terminate()
        process.wait(timeout=10)
