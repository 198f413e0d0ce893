"""Acceptance: a third-party agent type, installed beside the runner, runs with no
migration (CONTRACT.md, "Agent types are plugins").

A tiny separate distribution (``echo-plugin``, importing only ``runner.api``) is built
into a real wheel and installed with pip into a throw-away directory that the commands
below see on ``PYTHONPATH``: its entry points are real installed metadata. It brings an
agent type, a command, and a second agent type whose module cannot be imported, which
must not stop the others.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import daemon_env, daemons, query, wait_until

pytestmark = pytest.mark.slow

BUILTIN_TYPES = ("enrichment_agent, llm_agent, noop, opportunity_bot, scoring_agent, "
                 "scout_agent")

PYPROJECT = """\
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "echo-plugin"
version = "0.1.0"
requires-python = ">=3.11"

[project.entry-points."agent_runner.agents"]
echo_agent = "echo_plugin:EchoAgent"
broken_agent = "echo_plugin_broken:BrokenAgent"

[project.entry-points."agent_runner.commands"]
echo = "echo_plugin:ECHO"

[tool.setuptools]
py-modules = ["echo_plugin", "echo_plugin_broken"]
"""

ECHO_PLUGIN = '''\
"""An agent type from outside agent-runner: it imports runner.api and nothing else."""

from __future__ import annotations

import argparse
from typing import ClassVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from runner.api import AgentCommand, AgentContext, AgentResult, CommandHost


class EchoInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str
    stream_id: UUID | None = None


class EchoAgent:
    agent_type: ClassVar[str] = "echo_agent"
    Input: ClassVar[type[BaseModel]] = EchoInput

    async def run(self, ctx: AgentContext, payload: EchoInput) -> AgentResult:
        await ctx.log("echoing", text=payload.message)
        return AgentResult(output={"echo": payload.message, "attempt": ctx.attempt})


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("words", nargs="+")


def _echo(args: argparse.Namespace, host: CommandHost) -> int:
    host.say("echoing")
    print(" ".join(args.words))
    return 0


ECHO = AgentCommand(help="print the words given", add_arguments=_arguments, run=_echo)
'''

BROKEN_PLUGIN = '''\
raise ImportError("echo_plugin_broken needs a licence key")
'''


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The directory the echo-plugin wheel is pip-installed into; gone afterwards."""
    root = tmp_path_factory.mktemp("echo-plugin")
    source = root / "src"
    source.mkdir()
    (source / "pyproject.toml").write_text(PYPROJECT)
    (source / "echo_plugin.py").write_text(ECHO_PLUGIN)
    (source / "echo_plugin_broken.py").write_text(BROKEN_PLUGIN)
    wheels, target = root / "wheels", root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = wheels.glob("echo_plugin-0.1.0-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
         "--target", str(target), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    assert (target / "echo_plugin-0.1.0.dist-info" / "entry_points.txt").is_file()
    try:
        yield target
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _agent_runner(db_url: str, plugin_path: Path | None, *args: str,
                  cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed console script, as an operator runs it (outside the checkout)."""
    env = daemon_env(db_url)
    if plugin_path is not None:
        env["PYTHONPATH"] = str(plugin_path)
    return subprocess.run(
        [str(Path(sys.executable).parent / "agent-runner"), *args], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=120,
    )


def _metrics_url(log: str) -> str | None:
    for line in log.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "daemon_started":
            return str(event["metrics_url"])
    return None


def test_an_unregistered_agent_type_is_refused_naming_the_known_types(db_url: str) -> None:
    with pytest.raises(psycopg.errors.CheckViolation) as info:
        query(db_url, "INSERT INTO ai_agents (name, agent_type) "
                      "VALUES ('echo', 'echo_agent') RETURNING id")
    assert info.value.diag.message_primary == (
        f'unknown agent_type "echo_agent" for agent "echo"; known types: {BUILTIN_TYPES}')
    assert query(db_url, "SELECT count(*) FROM ai_agents") == [(0,)]


def test_an_installed_plugin_type_runs_without_a_migration(
    db_url: str, plugin_path: Path, tmp_path: Path
) -> None:
    migrations = query(db_url, "SELECT count(*) FROM runner_migrations")

    result = _agent_runner(db_url, plugin_path, "migrate", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "schema is up to date"
    assert f"agent types: echo_agent, {BUILTIN_TYPES}" in result.stderr
    # The broken one is named with its error, and left out.
    assert "agent_plugin_rejected" in result.stderr
    assert "echo_plugin_broken needs a licence key" in result.stderr
    assert query(db_url, "SELECT count(*) FROM runner_migrations") == migrations
    assert query(db_url, "SELECT module, distribution, takes_stream_id, takes_goal_context "
                         "FROM agent_types WHERE agent_type = 'echo_agent'") == [
        ("echo_plugin:EchoAgent", "echo-plugin 0.1.0", True, False)]
    assert query(db_url, "SELECT count(*) FROM agent_types "
                         "WHERE agent_type = 'broken_agent'") == [(0,)]

    query(db_url, "INSERT INTO ai_agents (name, agent_type) VALUES ('echo', 'echo_agent'), "
                  "('n', 'noop') RETURNING id")
    # The CLI validates the payload with the plugin's own model...
    refused = _agent_runner(db_url, plugin_path, "enqueue", "echo", "--payload",
                            '{"mesage": "typo"}', cwd=tmp_path)
    assert refused.returncode == 1
    assert "message: Field required" in refused.stderr
    enqueued = _agent_runner(db_url, plugin_path, "enqueue", "echo", "--payload",
                             '{"message": "hello from a plugin"}', cwd=tmp_path)
    assert enqueued.returncode == 0, enqueued.stderr
    echo_task = enqueued.stdout.strip()
    noop_task = str(query(db_url, "SELECT enqueue_agent_task('n')")[0][0])

    # A daemon refreshes agent_types when it starts, like migrate.
    query(db_url, "UPDATE agent_types SET seen_at = now() - interval '1 day' RETURNING 1")
    with daemons(db_url, tmp_path, PYTHONPATH=str(plugin_path)) as (daemon,):
        wait_until(lambda: query(db_url, "SELECT count(*) FROM agent_tasks "
                                         "WHERE status = 'completed'")[0][0] == 2,
                   message="the plugin's task and the noop task completed")
        url = wait_until(lambda: _metrics_url(daemon.log_text()), message="the metrics URL")
        scrape = httpx.get(f"{url}/metrics", timeout=5).text

    assert query(db_url, "SELECT status, output FROM agent_tasks WHERE id = %s",
                 (echo_task,)) == [("completed", {"echo": "hello from a plugin", "attempt": 1})]
    assert query(db_url, "SELECT status FROM agent_tasks WHERE id = %s",
                 (noop_task,)) == [("completed",)]
    assert query(db_url, "SELECT message FROM agent_task_logs WHERE task_id = %s",
                 (echo_task,)) == [("echoing",)]
    assert query(db_url, "SELECT count(*) FROM agent_types "
                         "WHERE seen_at < now() - interval '1 hour'") == [(0,)]
    # Its metric series carry its own agent_type, not "other".
    finished = {
        (sample.labels["agent_type"], sample.labels["outcome"]): sample.value
        for family in text_string_to_metric_families(scrape) for sample in family.samples
        if sample.name == "agent_runner_task_attempts_finished_total"
    }
    assert finished[("echo_agent", "completed")] == 1
    assert finished[("noop", "completed")] == 1
    assert ("other", "completed") not in finished


def test_an_installed_plugin_adds_a_command(db_url: str, plugin_path: Path,
                                            tmp_path: Path) -> None:
    listed = _agent_runner(db_url, plugin_path, "--help", cwd=tmp_path)
    assert listed.returncode == 0
    assert "print the words given" in listed.stdout
    for command in ("demo", "import-companies"):
        assert command in listed.stdout
    result = _agent_runner(db_url, plugin_path, "echo", "plugins", "work", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "plugins work\n")
    assert "agent-runner: echoing" in result.stderr
    usage = _agent_runner(db_url, plugin_path, "echo", cwd=tmp_path)
    assert usage.returncode == 2
    # Without the plugin on the path, there is no such command.
    assert _agent_runner(db_url, None, "echo", "x", cwd=tmp_path).returncode == 2

