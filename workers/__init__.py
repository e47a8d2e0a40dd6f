"""imshift.workers: the Dramatiq broker and actor, the code that runs one chunk
of a job (claim, rate-limited vendor calls, record), the cross-process rate
limiter and the sweeper that re-sends stalled work."""
