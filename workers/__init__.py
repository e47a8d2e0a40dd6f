"""imshift.workers: filled in by the job-engine issue."""
