"""One redaction filter for every log line a process writes: the configured
secrets (app secrets, admin tokens, the token key) are replaced by "***"
wherever they would appear, whatever code logged them."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterable

MASK = "***"


class Redact(logging.Filter):
    def __init__(self, secrets: Iterable[str]):
        super().__init__()
        # Longest first, so a secret that contains another is masked whole.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        for secret in self.secrets:
            if secret in message:
                message = message.replace(secret, MASK)
            if record.exc_text and secret in record.exc_text:
                record.exc_text = record.exc_text.replace(secret, MASK)
        record.msg, record.args = message, None
        return True


def secret_fields(config: Any) -> list[str]:
    """The values of a vendor config's secret fields (those kept out of repr; a
    config is a dataclass)."""
    return [str(getattr(config, f.name)) for f in dataclasses.fields(config)
            if not f.repr and isinstance(getattr(config, f.name), str) and getattr(config, f.name)]


def install(secrets: Iterable[str]) -> Redact:
    """Filter every handler of the root logger: every record any logger
    propagates passes through one of them. With no handler yet, add one
    (what logging's last resort would print, filtered)."""
    redact = Redact(secrets)
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.addFilter(redact)
    return redact
