"""imshift.models: the job tables, the engine and the state changes of items."""

from .db import make_engine
from .tables import Item, ItemState, Job, JobCount, JobStatus

__all__ = ["Item", "ItemState", "Job", "JobCount", "JobStatus", "make_engine"]
