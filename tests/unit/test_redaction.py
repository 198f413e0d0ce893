"""Secrets out of log lines, messages and stored text (runner.redaction, runner.logs)."""

from __future__ import annotations

import base64
import json
import logging

import pytest

from runner import logs
from runner.redaction import Redactor, database_passwords, redact_credentials
from tests.harness import test_settings

KEY = "sk-ant-test-SECRET123"
CH_KEY = "ch-key-0f6c1a77"
PASSWORD = "S3cr3t-p4ss"


@pytest.mark.parametrize(("text", "shown"), [
    ("connect to postgresql://app:S3cr3t@db.internal:5432/app failed",
     "connect to postgresql://app:***@db.internal:5432/app failed"),
    ("GET https://user:pa@ss@example.com/x?y=1 -> 401",
     "GET https://user:***@example.com/x?y=1 -> 401"),
    ("'postgres://u:S3cr3t@h/d' and http://x:y@h2/", "'postgres://u:***@h/d' and http://x:***@h2/"),
    ("host=db password=S3cr3t user=app", "host=db password=*** user=app"),
    ("host=db password = 'S3 cr\\'et' port=5", "host=db password = *** port=5"),
    ("postgresql://h/d?sslmode=require&password=S3cr3t&x=1",
     "postgresql://h/d?sslmode=require&password=***&x=1"),
    ("sslpassword=S3cr3t", "sslpassword=***"),
    # no credentials: unchanged
    ("https://example.com:8443/path/@user?q=a:b", "https://example.com:8443/path/@user?q=a:b"),
    ("mailto:someone@example.com; http://example.com/", "mailto:someone@example.com; http://example.com/"),
])
def test_credentials_in_urls_and_keywords(text: str, shown: str) -> None:
    assert redact_credentials(text) == shown


@pytest.mark.parametrize(("conninfo", "passwords"), [
    (f"postgresql://u:{PASSWORD}@h/d", {PASSWORD}),
    ("postgresql://u:p%40ss%2Fw0rd@h/d", {"p%40ss%2Fw0rd", "p@ss/w0rd"}),
    # libpq refuses it (and quotes it in its error): found all the same
    (f"postgresql://u:{PASSWORD}%zz@h/d", {f"{PASSWORD}%zz"}),
    (f"host=h password={PASSWORD} dbname=d", {PASSWORD}),
    (f"host=h password='{PASSWORD} x' dbname=d", {f"'{PASSWORD} x'", f"{PASSWORD} x"}),
    ("postgresql://u@h/d", set()),
    ("host=h dbname=d", set()),
])
def test_database_passwords(conninfo: str, passwords: set[str]) -> None:
    assert database_passwords(conninfo) == passwords


def secret_settings() -> Redactor:
    return Redactor.from_settings(test_settings(
        DATABASE_URL=f"postgresql://ar_secret_user:{PASSWORD}@127.0.0.1/x",
        ANTHROPIC_API_KEY=KEY, COMPANIES_HOUSE_API_KEY=CH_KEY))


def test_every_configured_secret_in_every_form_is_replaced() -> None:
    redact = secret_settings()
    basic = base64.b64encode(f"{CH_KEY}:".encode()).decode()
    text = (f"401 {{\"error\": \"invalid x-api-key {KEY}\"}} Authorization: Basic {basic} "
            f"password was {PASSWORD} and {json.dumps(KEY + 'x')}")
    shown = redact(text)
    for secret in (KEY, CH_KEY, PASSWORD, basic):
        assert secret not in shown
    assert shown == ('401 {"error": "invalid x-api-key ***"} Authorization: Basic *** '
                     'password was *** and "***x"')


def test_a_secret_with_json_escapes_is_replaced_inside_json() -> None:
    odd = 'pa"ss\\wörd'
    redact = Redactor([odd])
    assert redact(json.dumps({"error": f"bad key {odd}"})) == '{"error": "bad key ***"}'
    assert redact(f"bad key {odd}") == "bad key ***"


def test_short_values_are_not_searched_for() -> None:
    redact = Redactor(["ab", "abc"])
    assert redact("abcd abc ab") == "abcd abc ab"


def test_storage_keeps_the_database_password_out_of_plain_text_only_in_urls() -> None:
    settings = test_settings(DATABASE_URL=f"postgresql://u:{PASSWORD}@h/d",
                             ANTHROPIC_API_KEY=KEY)
    scrub = Redactor.for_storage(settings)
    assert scrub(f"key {KEY}") == "key ***"
    assert scrub(f"see postgresql://u:{PASSWORD}@h/d") == "see postgresql://u:***@h/d"
    # Not a token like a key: a bare occurrence in business text is left alone.
    assert scrub(f"the word {PASSWORD}") == f"the word {PASSWORD}"


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_every_log_line_is_redacted(
    log_format: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    logs.configure(log_format, "DEBUG", redact=secret_settings())
    log = logging.getLogger("runner.test_redaction")
    try:
        raise RuntimeError(f"Anthropic API 401: invalid x-api-key {KEY}")
    except RuntimeError:
        log.exception("task_failed %s", CH_KEY, extra={
            "error": f"postgresql://ar_secret_user:{PASSWORD}@127.0.0.1/x unreachable",
            "detail": {"key": KEY}})
    log.debug("debug line with %s", PASSWORD)
    for handler in root.handlers:
        handler.flush()
    written = capsys.readouterr().err
    assert "task_failed ***" in written
    assert "Traceback" in written
    assert "debug line with ***" in written
    for secret in (KEY, CH_KEY, PASSWORD):
        assert secret not in written
    if log_format == "json":
        documents = [json.loads(line) for line in written.splitlines() if line.startswith("{")]
        assert [d["event"] for d in documents] == ["task_failed ***", "debug line with ***"]


def test_logs_configure_without_redact_changes_nothing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    logs.configure("text", "INFO")
    logging.getLogger("runner.test_redaction").info("plain %s", "value")
    assert "plain value" in capsys.readouterr().err
