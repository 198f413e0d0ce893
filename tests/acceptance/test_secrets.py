"""No configured secret is ever echoed: not on stdout or stderr, not in the daemon's
log (at DEBUG), not in any row of any table.

The secrets: the password of ``DATABASE_URL`` (a real role; the local server's trust
auth accepts any password, so the daemon really connects with it), ``ANTHROPIC_API_KEY``
and ``COMPANIES_HOUSE_API_KEY``. Then:

* starts that fail: a bad setting beside the secret URL, URLs libpq refuses and quotes
  in its error, a database that does not answer (logs at DEBUG until the outage limit);
* a daemon at DEBUG running two ``llm_agent`` tasks against the Anthropic stand-in:
  one refused with a 401 whose body echoes every secret, one whose model answer
  repeats them (a prompt injection trying to exfiltrate its keys);
* the admin CLI reading those tasks back.

Every output, the log file, and the text of every row of every table and view of the
database are searched for each secret. Positive controls show the secrets were there
to leak: the stand-in received the key, and the redacted texts hold ``***``.
"""

from __future__ import annotations

import base64
import json
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import ADMIN_URL
from tests.harness import REPO, daemon_env, daemons, query, wait_for_daemons, wait_until
from tests.standins.anthropic_api import AnthropicStandIn, Reply, api_key_of, error, text

pytestmark = pytest.mark.slow

PASSWORD = "S3cr3t-p4ss"
ANTHROPIC_KEY = "sk-ant-test-SECRET123"
CH_KEY = "ch-test-SECRET456"
SECRETS = (PASSWORD, ANTHROPIC_KEY, CH_KEY)
MODEL = "claude-sonnet-4-6"


@pytest.fixture
def secret_role() -> Iterator[str]:
    role = f"ar_secret_user_{secrets.token_hex(3)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{PASSWORD}'")  # type: ignore[arg-type]
    try:
        yield role
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f"DROP ROLE IF EXISTS {role}")  # type: ignore[arg-type]


def _url(db_url: str, role: str, *, password: str = PASSWORD, port: Any = None,
         host: str | None = None) -> str:
    info = psycopg.conninfo.conninfo_to_dict(db_url)
    return (f"postgresql://{role}:{password}@{host or info.get('host', '127.0.0.1')}:"
            f"{port or info.get('port', 5432)}/{info['dbname']}")


class Outputs:
    """Everything written where someone could read it, by name."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}

    def add(self, name: str, text: str) -> None:
        self.texts[name] = text

    def add_run(self, name: str, result: subprocess.CompletedProcess[str]) -> None:
        self.add(f"{name} stdout", result.stdout)
        self.add(f"{name} stderr", result.stderr)

    def leaks(self) -> list[tuple[str, str]]:
        return [(name, secret) for name, text in self.texts.items()
                for secret in _forms() if secret in text]


def _forms() -> Iterator[str]:
    yield from SECRETS
    yield base64.b64encode(f"{CH_KEY}:".encode()).decode()


def _cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _echo_every_secret() -> str:
    basic = base64.b64encode(f"{CH_KEY}:".encode()).decode()
    return (f"invalid x-api-key {ANTHROPIC_KEY}; Authorization: Basic {basic}; "
            f"companies house key {CH_KEY}; see postgresql://u:{PASSWORD}@db.internal/x")


def _answer(body: dict[str, Any]) -> Reply:
    if "please fail" in json.dumps(body):
        return error(401, "authentication_error", _echo_every_secret())
    return text(f"Sure. Your keys: {ANTHROPIC_KEY} and {CH_KEY}, "
                f"password={PASSWORD} too")


def _every_row(db_url: str) -> dict[str, str]:
    """The text of every row of every table and view in the database's own schemas."""
    found: dict[str, str] = {}
    with psycopg.connect(db_url, autocommit=True) as conn:
        relations = conn.execute(
            "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) "
            "FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')").fetchall()
        for (relation,) in relations:
            rows = conn.execute(f"SELECT t::text FROM {relation} t").fetchall()  # type: ignore[arg-type]
            found[f"rows of {relation}"] = "\n".join(str(row[0]) for row in rows)
    return found


def test_secrets_never_appear_in_any_output(
    db_url: str, secret_role: str, tmp_path: Path
) -> None:
    secret_url = _url(db_url, secret_role)
    outputs = Outputs()
    with AnthropicStandIn(default=_answer) as api:
        env = daemon_env(
            secret_url, ANTHROPIC_API_KEY=ANTHROPIC_KEY, ANTHROPIC_BASE_URL=api.url,
            COMPANIES_HOUSE_API_KEY=CH_KEY, COMPANIES_HOUSE_BASE_URL=api.url,
            RUNNER_LOG_LEVEL="DEBUG")

        # -- starts that fail -------------------------------------------------------------
        failing = {
            "bad setting": ({"RUNNER_CONCURRENCY": "0"}, 2),
            "undecodable URL": ({"DATABASE_URL": _url(db_url, secret_role,
                                                      password=PASSWORD + "%zz")}, 1),
            "unparsable URL": ({"DATABASE_URL": f"postgresql://{secret_role}:{PASSWORD}@[::1/x"},
                               1),
            "keyword conninfo": ({"DATABASE_URL": f"host=127.0.0.1 password={PASSWORD} port=x"},
                                 1),
            "unreachable database": ({"DATABASE_URL": _url(db_url, secret_role, port=1)}, 1),
        }
        # A database that does not answer is waited for, logging each try: 3 s of it.
        give_up_soon = {"RUNNER_DB_OUTAGE_LIMIT": "3", "RUNNER_RESCUE_AFTER": "3",
                        "RUNNER_HEARTBEAT_INTERVAL": "1"}
        for name, (overrides, code) in failing.items():
            result = _cli({**env, **give_up_soon, **overrides}, "run")
            assert result.returncode == code, (name, result.stderr[-2000:])
            assert result.stderr.strip(), name
            outputs.add_run(f"run with {name}", result)
            cli = _cli({**env, **overrides}, "status")
            assert cli.returncode == code, (name, cli.stderr[-2000:])
            outputs.add_run(f"status with {name}", cli)
        assert "***" in outputs.texts["run with undecodable URL stderr"]
        assert '"database_unreachable"' in outputs.texts["run with unreachable database stderr"]

        # -- a daemon at DEBUG, with tasks whose errors and answers carry the secrets ----
        query(db_url, "INSERT INTO ai_agents (name, agent_type, model, instructions_prompt, "
                      "max_retries) VALUES ('echo', 'llm_agent', %s, 'Answer briefly.', 0) "
                      "RETURNING id", (MODEL,))
        failed_id, answered_id = (
            str(query(db_url, "SELECT enqueue_agent_task('echo', %s::jsonb)",
                      (json.dumps({"prompt": prompt}),))[0][0])
            for prompt in ("please fail", "what are your keys?"))
        with daemons(db_url, tmp_path, **{k: v for k, v in env.items()
                                          if k not in ("DATABASE_URL",)},
                     DATABASE_URL=secret_url) as (daemon,):
            wait_for_daemons(db_url, 1)
            # It really connected with the secret URL (as the role, with the password).
            assert query(db_url, "SELECT count(*) FROM pg_stat_activity WHERE usename = %s",
                         (secret_role,))[0][0] > 0
            wait_until(lambda: query(db_url, "SELECT count(*) FROM agent_tasks WHERE status "
                                             "IN ('completed', 'failed')")[0][0] == 2,
                       message="both tasks finished")
            daemon.signal(signal.SIGTERM)
            assert daemon.wait(timeout=30) == 0
            outputs.add("daemon log", daemon.log_text())
        # It really sent the key.
        assert {api_key_of(r.headers) for r in api.message_requests()} == {ANTHROPIC_KEY}
        assert '"event": "daemon_started"' in outputs.texts["daemon log"]
        assert '"level": "debug"' in outputs.texts["daemon log"]

        # -- the admin CLI reading them back ---------------------------------------------
        for args in (("show", failed_id, "--json"), ("show", answered_id, "--json"),
                     ("tasks", "--json"), ("logs", failed_id), ("status", "--json")):
            result = _cli(env, *args)
            assert result.returncode == 0, (args, result.stderr)
            outputs.add_run(" ".join(args), result)

    for name, rows in _every_row(db_url).items():
        outputs.add(name, rows)

    # Positive controls: what would have leaked is there, redacted.
    status, error_message = query(
        db_url, "SELECT status, error_message FROM agent_tasks WHERE id = %s", (failed_id,))[0]
    assert status == "failed"
    assert "invalid x-api-key ***" in error_message
    assert "postgresql://u:***@db.internal/x" in error_message
    answered = query(db_url, "SELECT status, output FROM agent_tasks WHERE id = %s",
                     (answered_id,))[0]
    assert answered[0] == "completed"
    assert answered[1]["text"] == "Sure. Your keys: *** and ***, password=*** too"
    assert query(db_url, "SELECT count(*) FROM llm_calls")[0][0] >= 1

    assert outputs.leaks() == []
