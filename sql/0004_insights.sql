-- Insights an LLM agent saved through its save_insight tool.
--
-- Rows are written only by the commit hook of the attempt that completes the task
-- (agents/tools.py buffers them while the agent runs), so a retried task never leaves
-- the insights of its failed attempts behind. task_id and execution_id say which run
-- wrote a row; company_id is kept without a foreign key so an insight survives the
-- company's re-import from a Companies House file.

CREATE TABLE stream_insights (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL DEFAULT runner_default_org_id() REFERENCES organizations (id),
    stream_id uuid NULL REFERENCES streams (id) ON DELETE CASCADE,
    company_id uuid NULL,
    task_id uuid NULL REFERENCES agent_tasks (id) ON DELETE SET NULL,
    execution_id uuid NULL REFERENCES agent_executions (id) ON DELETE SET NULL,
    kind text NOT NULL DEFAULT 'note' CHECK (length(kind) BETWEEN 1 AND 50),
    title text NOT NULL CHECK (length(title) BETWEEN 1 AND 300),
    body text NOT NULL DEFAULT '' CHECK (length(body) <= 20000),
    metadata jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX stream_insights_stream_idx ON stream_insights (stream_id, created_at DESC);
CREATE INDEX stream_insights_company_idx ON stream_insights (company_id) WHERE company_id IS NOT NULL;
CREATE INDEX stream_insights_task_idx ON stream_insights (task_id);
