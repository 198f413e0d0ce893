"""The LISTEN/NOTIFY channels, named once. The SQL that NOTIFYs on them is in sql/."""

from __future__ import annotations

from typing import Final

from runner.store import Conn

#: ``agent-runner pause`` / ``resume`` (runner_control changed).
CONTROL: Final = "agent_runner_control"
#: An agent's schedule changed (payload: the agent id).
SCHEDULES: Final = "agent_runner_schedules"
#: A workflow run changed status (JSON payload: workflow_run_id, status).
WORKFLOWS: Final = "agent_runner_workflows"
#: A task log line was written (``agent-runner logs --follow``).
LOGS: Final = "agent_runner_logs"
#: A webhook attempt became due (an event written, a retry scheduled, a claim handed back).
WEBHOOKS: Final = "agent_runner_webhooks"


async def listen(conn: Conn, channel: str) -> None:
    """Subscribe ``conn`` (autocommit) to one of the channels above."""
    if channel not in _ALL:
        raise ValueError(f"unknown channel {channel!r}")
    await conn.execute(f"LISTEN {channel}")


_ALL: Final = frozenset({CONTROL, SCHEDULES, WORKFLOWS, LOGS, WEBHOOKS})
