"""imshift.models: filled in by the job-engine issue."""
