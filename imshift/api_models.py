"""The HTTP API's response models and path parameters (imshift/api_jobs.py,
imshift/api_runs.py, imshift/api_schedules.py): one class is the validation
and the OpenAPI schema."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal, Optional

from fastapi import Path
from pydantic import BaseModel, Field

from imshift.models.tables import ItemState, JobStatus, ScheduleStatus

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


class FireOut(BaseModel):
    fire_at: float = Field(description="When the fire was due (Unix time), not when it ran; "
                           "the key of the fires' pages")
    fire_time: str = Field(description="fire_at on the schedule's zone's clock (ISO 8601)")
    state: Literal["fired", "missed", "failed"] = Field(
        description="fired: its job was made and started; missed: no scheduler ran within the "
                    "catch-up window; failed: the job could not be made (the note says why)")
    job_id: Optional[int] = None
    note: Optional[str] = None
    job: Optional[JobOut] = Field(None, description="The fired job now: its status and counts "
                                  "(null when nothing was fired)")


class ScheduleOut(BaseModel):
    id: int
    command: str = Field(description="send, send_group or broadcast")
    app: str
    status: ScheduleStatus
    at: Optional[float] = Field(None, description="A one-off's fire time (Unix time)")
    at_time: Optional[str] = Field(None, description="`at` on the zone's clock (ISO 8601)")
    cron: Optional[str] = Field(None, description="A recurring schedule's cron expression, "
                                "read on the zone's clock")
    tz: str = Field(description="The zone `at` and `cron` are read in (IANA name)")
    local_at: Optional[str] = Field(None, description="With --local-time: the wall time read on "
                                    "each recipient's zone's clock")
    zones: Optional[list[str]] = Field(None, description="With --local-time: the recipients' zones")
    next_at: Optional[float] = Field(None, description="The next fire (Unix time); null once "
                                     "nothing is left to fire")
    next_fire: Optional[str] = Field(None, description="next_at on the zone's clock (ISO 8601)")
    catch_up_seconds: float = Field(description="A fire this late (no scheduler ran) still fires; "
                                    "a later one is recorded missed")
    created_at: float
    sender: Optional[str] = None
    recipients: Optional[str] = Field(None, description="The recipient (or group) file, read "
                                      "when the schedule fires")
    message: dict[str, Any] = Field(description="{text} or {custom}, as given")
    last_fire: Optional[FireOut] = None


class SchedulesPage(BaseModel):
    schedules: list[ScheduleOut]
    next_before: Optional[int] = Field(None, description="Pass as ?before= for the next (older) page")


class FiresPage(BaseModel):
    fires: list[FireOut]
    next_before: Optional[float] = Field(None, description="Pass as ?before= for the next "
                                         "(older) page")


class ScheduleControlOut(BaseModel):
    id: int
    status: ScheduleStatus = Field(description="The schedule's status after the change")
    next_at: Optional[float] = None
    next_fire: Optional[str] = None
    message: str


class Problem(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": Problem}, 404: {"model": Problem}, 409: {"model": Problem},
          503: {"model": Problem}}

JobId = Annotated[int, Path(ge=1, le=MAX_ID, description="A job id")]
ScheduleId = Annotated[int, Path(ge=1, le=MAX_ID, description="A schedule id")]
RunRef = Annotated[str, Path(pattern=r"^[Rr]?[0-9]{1,12}$", description="A run: R<n>, or its number")]


class ExportFormat(str, Enum):
    csv = "csv"
    jsonl = "jsonl"
