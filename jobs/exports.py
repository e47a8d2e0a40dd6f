"""What `imshift results` exports write, beyond the values themselves.

A spreadsheet runs a CSV cell that starts with = + - @, a tab or a carriage
return as a formula (`=cmd|' /C calc'!A0`), and ids, names and vendor
messages are other people's text. CSV cells are defused as OWASP recommends
(CSV Injection): a single quote before such a cell, which the spreadsheet
shows as text. Only CSV: JSON Lines and the vendor get the values as written.
"""

from __future__ import annotations

from typing import Any, Mapping

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text, never runs."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_record(record: Mapping[str, Any]) -> dict[str, Any]:
    return {name: spreadsheet_safe(value) for name, value in record.items()}
