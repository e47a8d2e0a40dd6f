"""What `imshift results` exports write, beyond the values themselves.

Machine values (ids, tokens, passwords, codes, the result JSON) are written
exactly as they are, in every format: they are loaded back into apps, and a
password with a character added no longer logs in. A spreadsheet runs a CSV
cell that starts with = + - @, a tab or a carriage return as a formula
(OWASP: CSV Injection), so the free-text columns, which carry other
people's words (vendors' messages, reasons quoting the input), get a single
quote before such a cell in CSV; nothing reads those back. JSON Lines keep
every value as written.
"""

from __future__ import annotations

import csv
import json
from typing import IO, Any, Callable, Mapping, Optional

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
FREE_TEXT = frozenset({"message"})  # columns read by people, never loaded back


def spreadsheet_safe(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text, never runs."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record's CSV cells: free text defused, machine values exact."""
    return {name: spreadsheet_safe(value) if name in FREE_TEXT else value
            for name, value in record.items()}


# What `imshift results` and `GET /api/jobs/N/results` write for each item, in this order.
RESULT_FIELDS = ["row", "id", "outcome", "attempts", "code", "message", "user_id", "token",
                 "password", "result"]


def export_record(item: Any, unseal: Callable[[bytes], dict]) -> dict[str, Any]:
    """One item of jobs.progress.results as exported, its secrets decrypted by `unseal`."""
    secrets = unseal(item.secret) if item.secret else {}
    return {"row": item.row, "id": item.key, "outcome": item.state, "attempts": item.attempts,
            "code": item.code, "message": item.message,
            "user_id": (item.result or {}).get("user_id"), "token": secrets.get("token"),
            "password": secrets.get("password"),
            "result": json.dumps(item.result, ensure_ascii=False) if item.result else None}


def write_record(out: IO[str], writer: Optional[csv.DictWriter], record: Mapping[str, Any]) -> None:
    """A record as a CSV row (`writer` over `out`) or, without a writer, a JSON line."""
    if writer:
        writer.writerow(csv_record(record))
    else:
        out.write(json.dumps({k: v for k, v in record.items() if v is not None},
                             ensure_ascii=False) + "\n")


def token_key_problem(engine, cipher, job_id: int) -> Optional[str]:
    """Why an export of the job cannot show its tokens and passwords:
    "missing" (it holds some, and no key is set), "wrong" (the key does not
    open them), or None (it holds none, or the key opens them)."""
    from cryptography.fernet import InvalidToken

    from .progress import first_secret

    sealed = first_secret(engine, job_id)
    if sealed is None:
        return None
    if cipher is None:
        return "missing"
    try:
        cipher.decrypt(sealed)
    except InvalidToken:
        return "wrong"
    return None
