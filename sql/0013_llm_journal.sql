-- Durable turns and the transcript (issue 12, items 3 and 4; CONTRACT.md "LLM budgets
-- and limits").
--
-- llm_journal holds every model response and every tool result of every attempt, each
-- written in its own short transaction as it happens (runner/store/journal.py). A later
-- attempt of the same task looks up each turn by (task, step, request fingerprint):
-- found, it replays the recorded response (or tool result) instead of calling the
-- model (or running the tool) again, and writes a row marked `replayed` for its own
-- execution, so the transcript shows what every attempt saw.
--
-- `fingerprint` is the sha256 of a canonical JSON of the request (model, system,
-- messages, tools, max_tokens) for a model turn, and of (tool_use_id, name, input) for
-- a tool result. `response` is what a replay needs (the whole API message; for a tool,
-- its outcome and the writes it buffered); `content` is what the transcript shows.
--
-- Retention: the rows go with their task (ON DELETE CASCADE from agent_tasks and
-- agent_executions), so the prune of finished tasks (runner/store/retention.py) needs
-- no statement of its own. The cost ledger (llm_calls) stays the record of money.

CREATE TABLE llm_journal (
    id bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY,
    task_id uuid NOT NULL REFERENCES agent_tasks (id) ON DELETE CASCADE,
    execution_id uuid NOT NULL REFERENCES agent_executions (id) ON DELETE CASCADE,
    step integer NOT NULL CHECK (step >= 1),
    kind text NOT NULL CHECK (kind IN ('model', 'tool')),
    fingerprint text NOT NULL,
    -- the tool_use block's id (tool rows only)
    tool_use_id text NULL,
    role text NOT NULL CHECK (role IN ('assistant', 'tool')),
    content jsonb NOT NULL,
    response jsonb NOT NULL,
    tool_name text NULL,
    tool_input jsonb NULL,
    tool_output text NULL,
    input_tokens integer NOT NULL DEFAULT 0 CHECK (input_tokens >= 0),
    output_tokens integer NOT NULL DEFAULT 0 CHECK (output_tokens >= 0),
    cost_usd numeric(14, 8) NOT NULL DEFAULT 0,
    duration_ms integer NULL,
    replayed boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'tool') = (tool_use_id IS NOT NULL))
);

-- One row per turn and attempt (a write that is retried through connection trouble
-- lands once).
CREATE UNIQUE INDEX llm_journal_turn_idx
    ON llm_journal (execution_id, kind, step, coalesce(tool_use_id, ''));
-- The replay lookup: the first live row of a task's turn with this request.
CREATE INDEX llm_journal_lookup_idx ON llm_journal (task_id, kind, step, fingerprint, id)
    WHERE NOT replayed;
-- ON DELETE CASCADE from agent_executions finds its rows by index.
CREATE INDEX llm_journal_execution_idx ON llm_journal (execution_id);
-- The cascade from a pruned task deletes its journal rows by task_id; the lookup index
-- above is partial, so without this one that delete would scan the journal per task.
CREATE INDEX llm_journal_task_idx ON llm_journal (task_id);

CREATE VIEW llm_transcript AS
SELECT task_id, execution_id, step, role, content, tool_name, tool_input, tool_output,
       input_tokens, output_tokens, cost_usd, duration_ms, replayed, created_at
FROM llm_journal;
