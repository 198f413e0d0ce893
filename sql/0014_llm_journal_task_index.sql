-- The ON DELETE CASCADE from agent_tasks (a pruned task) deletes the task's journal rows
-- by task_id; the replay index on task_id is partial (WHERE NOT replayed), so that
-- delete could not use it and scanned the whole journal once per pruned task.
CREATE INDEX llm_journal_task_idx ON llm_journal (task_id);
