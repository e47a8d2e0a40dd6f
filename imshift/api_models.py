"""The HTTP API's response models and path parameters (imshift/api_jobs.py,
imshift/api_runs.py): one class is the validation and the OpenAPI schema."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Optional

from fastapi import Path
from pydantic import BaseModel, Field

from imshift.models.tables import ItemState, JobStatus

MAX_ID = 2**31 - 1  # ids and seqs are 32-bit integers in PostgreSQL


class RatePoint(BaseModel):
    t: float = Field(description="Unix time of the sample")
    done: int = Field(description="Items done at that time")


class ItemOut(BaseModel):
    seq: int = Field(description="Position in the input (0-based); the key of keyset pages")
    row: int = Field(description="Line or row number in the input")
    id: str = Field(description="The user id or recipient, as written in the input")
    outcome: ItemState
    attempts: int
    code: Optional[str] = Field(None, description="The vendor's code, or invalid/duplicate from planning")
    message: Optional[str] = None
    result: Optional[dict[str, Any]] = Field(None, description="What the vendor returned, without "
                                             "secrets (tokens appear only in the exports)")
    updated_at: Optional[float] = None


class JobOut(BaseModel):
    id: int
    kind: str
    operation: Optional[str] = None
    app: str
    status: JobStatus
    total: int
    done: int = Field(description="Items that ended with an outcome (cancelled ones not included)")
    cancelled: int
    counts: dict[str, int] = Field(description="Items per state (ok, exists, rejected, failed, "
                                   "unknown, skipped, cancelled, claimed, pending); states with "
                                   "no item are left out")
    rate: Optional[float] = Field(None, description="Items per second, over the last minute while running")
    eta_seconds: Optional[float] = None
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    idle_seconds: Optional[float] = Field(None, description="Seconds since the job last recorded progress")
    stop_reason: Optional[str] = None


class JobProgress(JobOut):
    history: list[RatePoint] = Field(description="Items done over the last minutes, for a rate chart")


class JobDetail(JobProgress):
    failures: list[ItemOut] = Field(description="The first rejected, failed or unknown items (up "
                                    "to 10, in that order), as read at most a second ago")


class JobsPage(BaseModel):
    jobs: list[JobOut]
    next_before: Optional[int] = Field(None, description="Pass as ?before= for the next (older) page")


class ItemsPage(BaseModel):
    items: list[ItemOut]
    next_after: Optional[int] = Field(None, description="Pass as ?after= for the next page")


class ControlOut(BaseModel):
    id: int
    status: str = Field(description="The job's status after the change ('removed' for a job "
                        "never planned whole that cancel deleted)")
    changed: int = Field(description="Items closed (cancel), put back to work (retry), chunks sent (resume)")
    message: str


class StageOut(JobOut):
    stage: str = Field(description="accounts, friends, groups, members, tokens or verify")


class RunOut(BaseModel):
    id: int
    name: str = Field(description="The run as the CLI names it: R<id>")
    source_app: str
    app: str = Field(description="The target app")
    status: JobStatus = Field(description="The run's status: that of its first stage not finished")
    created_at: float
    finished_at: Optional[float] = None
    current_stage: Optional[str] = Field(None, description="The stage running or due next; null "
                                         "once every stage has finished")
    stages: list[StageOut] = Field(description="The run's stages in order, each a job")


class RunsPage(BaseModel):
    runs: list[RunOut]
    next_before: Optional[int] = Field(None, description="Pass as ?before= for the next (older) page")


class RunControlOut(BaseModel):
    id: int
    name: str
    status: JobStatus = Field(description="The run's status after the change")
    stage: Optional[str] = Field(None, description="The stage paused or resumed at")
    changed: int = Field(description="Items closed (cancel); 0 otherwise")
    message: str


class Problem(BaseModel):
    detail: str


ERRORS = {401: {"model": Problem}, 404: {"model": Problem}, 409: {"model": Problem},
          503: {"model": Problem}}

JobId = Annotated[int, Path(ge=1, le=MAX_ID, description="A job id")]
RunRef = Annotated[str, Path(pattern=r"^[Rr]?[0-9]{1,12}$", description="A run: R<n>, or its number")]


class ExportFormat(str, Enum):
    csv = "csv"
    jsonl = "jsonl"
