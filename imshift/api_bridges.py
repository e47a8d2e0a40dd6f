"""`/api/bridges...`: the cut-over bridges (as `imshift bridge list`), one
bridge's report per direction (as `imshift bridge status`), and pause,
resume and remove as POSTs answering with the new status, or 409 with the
CLI's reason. Changes and reports are jobs/bridges.py's."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal, Optional

from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel, Field

from imshift.jobs import bridges

from .api_models import ERRORS, MAX_ID
from .context import Context


BridgeId = Annotated[int, Path(ge=1, le=MAX_ID, description="A bridge id (B<n> without the B)")]


class DirectionOut(BaseModel):
    from_app: str
    to_app: str
    relayed: int
    pending: int
    held: int
    failed: int
    rejected: int = Field(description="Of `failed`, those the target refused: retry does not send them again")
    unknown: int
    duplicates: int
    echoes: int
    refused: int
    ignored: int
    lag_p50: Optional[float]
    lag_p99: Optional[float]


class BridgeOut(BaseModel):
    id: int
    name: str
    source_app: str
    app: str
    run: str
    both_ways: bool
    hold_seconds: float
    settle_seconds: float
    status: str
    stop_reason: Optional[str]
    created_at: float
    directions: list[DirectionOut]
    last_failures: list[dict[str, Any]]


class BridgeControlOut(BaseModel):
    id: int
    status: str


class BridgeRetryOut(BaseModel):
    id: int
    retried: int  # messages set to be relayed again


def _out(r: dict[str, Any]) -> dict[str, Any]:
    return dict(id=r["id"], name=r["name"], source_app=r["from"], app=r["to"], run=r["run"],
                both_ways=r["both_ways"], hold_seconds=r["hold"], settle_seconds=r["settle"],
                status=r["status"], stop_reason=r["stop_reason"], created_at=r["created_at"],
                directions=[dict(w, from_app=w["from"], to_app=w["to"]) for w in r["directions"]],
                last_failures=r["last_failures"])


def bridge_router(ctx: Context) -> APIRouter:
    router = APIRouter()

    def report(bridge_id: int) -> dict[str, Any]:
        try:
            return bridges.report(ctx.engine, bridge_id)
        except bridges.BridgeError as exc:
            raise HTTPException(404, str(exc)) from None

    @router.get("/api/bridges", response_model=list[BridgeOut], responses=ERRORS,
                summary="Open bridges, newest first")
    def list_bridges(removed: bool = False) -> list[dict[str, Any]]:
        return [_out(report(r.id)) for r in bridges.listed(ctx.engine, removed=removed)]

    @router.get("/api/bridges/{bridge_id}", response_model=BridgeOut, responses=ERRORS,
                summary="A bridge: per direction, relayed, held, failed, dropped and lag")
    def one(bridge_id: BridgeId) -> dict[str, Any]:
        return _out(report(bridge_id))

    # Before the route below, whose {action} would take "retry" too.
    @router.post("/api/bridges/{bridge_id}/retry", response_model=BridgeRetryOut, responses=ERRORS,
                 summary="Relay a bridge's failed messages again (and, asked, the unknown ones)")
    def retry(bridge_id: BridgeId, unknown: bool = False) -> dict[str, Any]:
        report(bridge_id)
        return {"id": bridge_id, "retried": bridges.retry(ctx.engine, bridge_id, unknown=unknown)}

    @router.post("/api/bridges/{bridge_id}/{action}", response_model=BridgeControlOut, responses=ERRORS,
                 summary="Pause, resume or remove a bridge")
    def steer(bridge_id: BridgeId, action: Literal["pause", "resume", "remove"]) -> dict[str, Any]:
        report(bridge_id)
        try:
            state = bridges.control(ctx.engine, bridge_id, action)
        except bridges.BridgeError as exc:
            raise HTTPException(409, str(exc)) from None
        if action == "resume":
            from imshift.workers import relay

            with ctx.engine.begin() as conn:
                wake = relay.wake_needed(conn, bridge_id, time.time())
            if wake:
                ctx.broker.actors["relay_bridge"].send(bridge_id)
        return {"id": bridge_id, "status": state}

    return router
