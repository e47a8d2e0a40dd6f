"""The module `imshift worker` hands to Dramatiq's CLI: each worker process
imports it, which builds the runtime from the settings and binds the actor."""

import logging

import redis

from imshift import logs, metrics
from imshift.context import Context, SetupError
from imshift.workers import heap
from imshift.workers.sweeper import Sweeper

logging.getLogger("httpx").setLevel(logging.WARNING)

context = Context()
logs.install(context.secrets())
runtime = context.runtime
metrics.worker_process(runtime)  # its calls and chunks, for `imshift worker --metrics-port`
broker = context.broker
if not context.settings.redis_url:  # `imshift worker` refuses this first (imshift/cli.py)
    raise SetupError("workers need REDIS_URL")
broker.add_middleware(Sweeper(runtime, redis.Redis.from_url(context.settings.redis_url)))
heap.settle()
