"""Serve sandboxes over real HTTP on loopback: in the foreground for
`imshift sandbox`, or in a background thread for tests and benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Iterator, Sequence

import uvicorn

from .common import Sandbox


def _server(sandbox: Sandbox, host: str, port: int) -> uvicorn.Server:
    config = uvicorn.Config(sandbox.app, host=host, port=port, log_level="warning",
                            lifespan="off", access_log=False, timeout_graceful_shutdown=1)
    return uvicorn.Server(config)


async def serve(sandboxes: Sequence[tuple[Sandbox, int]], host: str = "127.0.0.1") -> None:
    """Serve each (sandbox, port) until cancelled (Ctrl-C)."""
    servers = [_server(sandbox, host, port) for sandbox, port in sandboxes]
    await asyncio.gather(*(server.serve() for server in servers))


@contextlib.contextmanager
def served(sandbox: Sandbox, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `sandbox` in a background thread; yields its base URL.
    Port 0 picks a free port."""
    server = _server(sandbox, host, port)
    thread = threading.Thread(target=server.run, name=f"sandbox-{sandbox.vendor}", daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started or not thread.is_alive():
                break
            threading.Event().wait(0.01)
        if not server.started:
            raise RuntimeError(f"the {sandbox.vendor} sandbox did not start on {host}:{port}")
        bound = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
