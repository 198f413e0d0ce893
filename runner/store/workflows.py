"""Workflow runs as Postgres keeps them.

The rules live in SQL (sql/0005_workflows.sql): a run's next steps are enqueued by a
trigger in the transaction that completes their last parent; runs are started by
``trigger_stream_workflow`` (SQL). These are the texts that read a run back, for the
CLI (:mod:`runner.store.operator`) and the tests.
"""

from __future__ import annotations

from typing import Final

#: One run by id.
RUN: Final = """
SELECT id, stream_id, trigger, status, priority, error_message, created_at, completed_at
FROM workflow_runs WHERE id = %s
"""

#: A run's steps (``workflow_run_tree``), parents before children.
TREE: Final = """
SELECT agent_id, agent_name, depth, execution_order, status, task_id, trigger,
       parent_task_ids, parent_agents, note, enqueued_at, completed_at
FROM workflow_run_tree
WHERE workflow_run_id = %s
ORDER BY depth NULLS LAST, execution_order, agent_name
"""
