"""Secrets never reach a log line, whoever logs them."""

import logging

from imshift.logs import Redact, secret_fields
from imshift.vendors.maxim import MaximConfig
from imshift.vendors.netease import NeteaseConfig


def test_configured_secrets_are_masked_in_messages_args_and_tracebacks():
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    handler = Keep()
    handler.addFilter(Redact(["s3cr3t-app-secret", "tok-123456"]))
    log = logging.getLogger("imshift.test_logs")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("calling with %s", "s3cr3t-app-secret")
        try:
            raise ValueError("token tok-123456 refused")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    text = "\n".join(records)
    assert "s3cr3t-app-secret" not in text and "tok-123456" not in text
    assert "calling with ***" in text and "token *** refused" in text


def test_the_secret_fields_of_vendor_configs_are_known():
    assert secret_fields(NeteaseConfig(app_key="key", app_secret="the-secret")) == ["the-secret"]
    assert secret_fields(MaximConfig(app_id="a", access_token="admin-token")) == ["admin-token"]
    assert "the-secret" not in repr(NeteaseConfig(app_key="key", app_secret="the-secret"))
