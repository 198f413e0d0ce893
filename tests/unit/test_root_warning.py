"""``agent-runner run`` as root against its own DATABASE_URL warns once, naming the
dedicated-user set-up (issue 10, item 6). The real daemon: tests/acceptance/test_deployment.py."""

from __future__ import annotations

import logging

import pytest

from runner.cli import ROOT_HINT, warn_if_root
from tests.harness import test_settings

URL = "postgresql://app@db.internal/app"


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.msg == "running_as_root"]


def test_root_with_a_database_url_gets_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    assert warn_if_root(test_settings(DATABASE_URL=URL), 0)
    (warning,) = _warnings(caplog)
    assert warning.levelno == logging.WARNING
    assert warning.hint == ROOT_HINT  # type: ignore[attr-defined]
    assert "useradd --system" in ROOT_HINT and "User=agent-runner" in ROOT_HINT


@pytest.mark.parametrize(("database_url", "euid"), [
    (URL, 1000),  # not root
    (None, 0),  # root, embedded Postgres: that path runs the server as its own user
])
def test_no_warning_otherwise(
    database_url: str | None, euid: int, caplog: pytest.LogCaptureFixture
) -> None:
    assert not warn_if_root(test_settings(DATABASE_URL=database_url), euid)
    assert _warnings(caplog) == []
