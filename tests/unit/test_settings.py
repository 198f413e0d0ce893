"""Settings that cannot contradict each other (issue 9, item 6), and refused values that
never echo a password."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.settings import Settings, SettingsError, load_settings, redact_url
from tests.harness import REPO, daemon_env, test_settings

#: Environment variables these tests set; any the machine has would change the outcome.
_ISOLATED = {name: value for name, value in os.environ.items()
             if not name.startswith(("RUNNER_", "DATABASE_URL", "ANTHROPIC_", "COMPANIES_"))}


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in set(os.environ) - set(_ISOLATED):
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env file


_VARIABLES = {field.alias for field in Settings.model_fields.values()}


def refusal(**overrides: object) -> str:
    with pytest.raises(SettingsError) as caught:
        load_settings(**overrides)
    return str(caught.value)


# Defaults and the configurations the project itself uses --------------------------------


def test_defaults() -> None:
    settings = load_settings()
    assert settings.db_outage_limit == 300
    assert settings.pool_timeout == 10
    assert settings.heartbeat_deadline == 5


def test_derived_defaults_follow_the_heartbeat_and_rescue_settings() -> None:
    fast = load_settings(RUNNER_HEARTBEAT_INTERVAL="0.5", RUNNER_RESCUE_AFTER="2")
    assert (fast.heartbeat_deadline, fast.pool_timeout) == (0.5, 1.0)
    slow = load_settings(RUNNER_HEARTBEAT_INTERVAL="30", RUNNER_RESCUE_AFTER="120")
    assert (slow.heartbeat_deadline, slow.pool_timeout) == (5.0, 10.0)


def test_explicit_values_win() -> None:
    settings = load_settings(RUNNER_DB_POOL_TIMEOUT="4", RUNNER_HEARTBEAT_TIMEOUT="2.5",
                             RUNNER_DB_OUTAGE_LIMIT="60")
    assert (settings.pool_timeout, settings.heartbeat_deadline, settings.db_outage_limit) \
        == (4.0, 2.5, 60.0)


def test_the_llm_switches_are_on_unless_turned_off() -> None:
    settings = load_settings()
    assert (settings.llm_limiter, settings.llm_replay) == (True, True)
    off = load_settings(RUNNER_LLM_LIMITER="off", RUNNER_LLM_REPLAY="false")
    assert (off.llm_limiter, off.llm_replay) == (False, False)
    assert "RUNNER_LLM_LIMITER" in refusal(RUNNER_LLM_LIMITER="sometimes")


@pytest.mark.parametrize("environment", [
    {"RUNNER_HEARTBEAT_INTERVAL": "5", "RUNNER_RESCUE_AFTER": "20"},   # the defaults
    {"RUNNER_HEARTBEAT_INTERVAL": "0.5", "RUNNER_RESCUE_AFTER": "2"},  # test_daemon's fast
    {"RUNNER_HEARTBEAT_INTERVAL": "1", "RUNNER_RESCUE_AFTER": "20"},   # the fault suite
    {"RUNNER_HEARTBEAT_INTERVAL": "1", "RUNNER_RESCUE_AFTER": "3"},    # exactly 3 beats
])
def test_configurations_in_use_are_accepted(environment: dict[str, str]) -> None:
    load_settings(**environment)


def test_the_test_harness_settings_are_accepted() -> None:
    test_settings()
    environment = {key: value for key, value in daemon_env("postgresql://h/db").items()
                   if key in _VARIABLES}
    assert {"RUNNER_HEARTBEAT_INTERVAL", "RUNNER_RESCUE_AFTER"} <= set(environment)
    load_settings(**environment)


# Contradictions -------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "first", "second"), [
    ({"RUNNER_HEARTBEAT_INTERVAL": "10"},
     "RUNNER_RESCUE_AFTER", "RUNNER_HEARTBEAT_INTERVAL"),
    ({"RUNNER_HEARTBEAT_INTERVAL": "2", "RUNNER_RESCUE_AFTER": "5"},
     "RUNNER_RESCUE_AFTER", "RUNNER_HEARTBEAT_INTERVAL"),
    ({"RUNNER_DB_POOL_TIMEOUT": "20"}, "RUNNER_DB_POOL_TIMEOUT", "RUNNER_RESCUE_AFTER"),
    ({"RUNNER_DB_POOL_TIMEOUT": "30"}, "RUNNER_DB_POOL_TIMEOUT", "RUNNER_RESCUE_AFTER"),
    ({"RUNNER_HEARTBEAT_TIMEOUT": "10", "RUNNER_HEARTBEAT_INTERVAL": "5"},
     "RUNNER_HEARTBEAT_TIMEOUT", "RUNNER_RESCUE_AFTER"),
    ({"RUNNER_HEARTBEAT_TIMEOUT": "4", "RUNNER_HEARTBEAT_INTERVAL": "3"},
     "RUNNER_HEARTBEAT_TIMEOUT", "RUNNER_HEARTBEAT_INTERVAL"),
    ({"RUNNER_RETRY_BASE_DELAY": "90"}, "RUNNER_RETRY_BASE_DELAY", "RUNNER_RETRY_MAX_DELAY"),
    ({"RUNNER_DB_OUTAGE_LIMIT": "19"}, "RUNNER_DB_OUTAGE_LIMIT", "RUNNER_RESCUE_AFTER"),
    ({"RUNNER_RESCUE_AFTER": "600"}, "RUNNER_DB_OUTAGE_LIMIT", "RUNNER_RESCUE_AFTER"),
])
def test_a_contradiction_is_refused_naming_both_variables(
    overrides: dict[str, str], first: str, second: str
) -> None:
    message = refusal(**overrides)
    assert message.startswith("invalid configuration: ")
    assert first in message and second in message
    assert "(got" not in message  # the input of a model-level error is every setting


@pytest.mark.parametrize("overrides", [
    {"RUNNER_RESCUE_AFTER": "15"},                                   # exactly 3 beats
    {"RUNNER_DB_POOL_TIMEOUT": "19.9"},
    {"RUNNER_HEARTBEAT_TIMEOUT": "5"},                                # = the interval
    {"RUNNER_RETRY_BASE_DELAY": "60"},                                # = the cap
    {"RUNNER_DB_OUTAGE_LIMIT": "20"},                                 # = rescue
    {"RUNNER_RESCUE_AFTER": "600", "RUNNER_DB_OUTAGE_LIMIT": "900"},
])
def test_the_limits_themselves_are_accepted(overrides: dict[str, str]) -> None:
    load_settings(**overrides)


def test_every_contradiction_is_reported_at_once() -> None:
    message = refusal(RUNNER_HEARTBEAT_INTERVAL="1", RUNNER_RESCUE_AFTER="5",
                      RUNNER_DB_POOL_TIMEOUT="6", RUNNER_RETRY_BASE_DELAY="9",
                      RUNNER_RETRY_MAX_DELAY="1", RUNNER_DB_OUTAGE_LIMIT="2")
    assert message.count(";") == 2
    for name in ("RUNNER_DB_POOL_TIMEOUT", "RUNNER_RETRY_BASE_DELAY", "RUNNER_DB_OUTAGE_LIMIT"):
        assert name in message


def test_a_contradiction_never_quotes_the_secrets_beside_it() -> None:
    message = refusal(RUNNER_HEARTBEAT_INTERVAL="10", ANTHROPIC_API_KEY="sk-ant-s3cret",
                      DATABASE_URL="postgresql://u:s3cret@h/db")
    assert "s3cret" not in message


@pytest.mark.parametrize("name", ["RUNNER_DB_POOL_TIMEOUT", "RUNNER_HEARTBEAT_TIMEOUT",
                                  "RUNNER_DB_OUTAGE_LIMIT"])
@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_new_durations_must_be_positive_numbers(name: str, value: str) -> None:
    assert refusal(**{name: value}).startswith(f"invalid configuration: {name}: ")


# Passwords ------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "shown"), [
    ("postgresql://u:s3cret@h:5432/db", "postgresql://u:***@h:5432/db"),
    ("postgres://u:s3c@ret@h/db", "postgres://u:***@h/db"),
    ("postgresql://u@h/db?sslmode=require&password=s3cret",
     "postgresql://u@h/db?sslmode=require&password=***"),
    ("postgresql:///db?host=/tmp&PASSWORD=s3cret#x", "postgresql:///db?host=/tmp&PASSWORD=***#x"),
    ("mysql://u:s3cret@h/db", "mysql://u:***@h/db"),
    ("host=h password=s3cret user=u", "host=h password=*** user=u"),
    ("host=h password = 's3 cr\\'et' user=u", "host=h password = *** user=u"),
    ("postgresql://u@h/db", "postgresql://u@h/db"),
    ("postgresql://h:5432/db", "postgresql://h:5432/db"),
    ("http://127.0.0.1:9/anthropic", "http://127.0.0.1:9/anthropic"),
    ("not a url", "not a url"),
])
def test_redact_url(value: str, shown: str) -> None:
    assert redact_url(value) == shown
    assert "s3" not in redact_url(value)


def test_a_refused_database_url_does_not_echo_its_password() -> None:
    message = refusal(DATABASE_URL="mysql://admin:s3cret@db.example/app")
    assert "DATABASE_URL" in message and "mysql://admin:***@db.example/app" in message
    assert "s3cret" not in message


def test_a_refused_secret_is_not_echoed_at_all() -> None:
    message = refusal(COMPANIES_HOUSE_API_KEY=12345)
    assert "COMPANIES_HOUSE_API_KEY" in message and "12345" not in message


def test_a_refused_url_elsewhere_is_redacted_too() -> None:
    message = refusal(RUNNER_METRICS_ADDR="http://u:s3cret@h")
    assert "RUNNER_METRICS_ADDR" in message and "s3cret" not in message


# Through the CLI ------------------------------------------------------------------------


def _cli(tmp_path: Path, **environment: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner.cli", "status"], cwd=tmp_path,
        env={**_ISOLATED, "PYTHONPATH": str(REPO), **environment},
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_the_cli_refuses_a_contradiction_with_exit_2(tmp_path: Path) -> None:
    done = _cli(tmp_path, DATABASE_URL="postgresql://admin:s3cret@127.0.0.1:1/db",
                RUNNER_HEARTBEAT_INTERVAL="10", RUNNER_RESCUE_AFTER="20")
    assert done.returncode == 2
    assert "RUNNER_RESCUE_AFTER" in done.stderr and "RUNNER_HEARTBEAT_INTERVAL" in done.stderr
    assert "s3cret" not in done.stdout + done.stderr


def test_the_cli_refuses_a_bad_database_url_without_its_password(tmp_path: Path) -> None:
    done = _cli(tmp_path, DATABASE_URL="mysql://admin:s3cret@127.0.0.1/db")
    assert done.returncode == 2
    assert "DATABASE_URL" in done.stderr and "admin:***@" in done.stderr
    assert "s3cret" not in done.stdout + done.stderr
