"""imshift.jobs: producers (input files -> planned jobs of items), job control
(start, pause, resume, cancel, retry) and progress and result queries. The
faces (CLI, HTTP) call these; nothing here is written twice for them."""
