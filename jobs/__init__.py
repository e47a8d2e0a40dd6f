"""imshift.jobs: filled in by the job-engine issue."""
