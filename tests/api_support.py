"""The job engine's test helpers (tests/jobs/helpers.py) for the tests of
the API, the page and the metrics, which live beside the CLI's tests."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("job_helpers", Path(__file__).parent / "jobs" / "helpers.py")
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)

context, wait_until_done, write_users = _helpers.context, _helpers.wait_until_done, _helpers.write_users
