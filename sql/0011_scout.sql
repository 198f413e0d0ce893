-- Insights written once, and the scout agent (issue 11, items 4 and 5).
--
-- 1. stream_insights.dedupe_key. The business agents write one insight per run
--    (opportunity_bot: companies found and qualified; enrichment_agent: buying signals
--    found; scoring_agent: newly critical and high leads) and the scout one per new
--    signal. Each row names what it is about in dedupe_key, and the partial unique index
--    makes a second row about the same thing impossible: writers insert with
--    ON CONFLICT (org_id, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING, so a
--    retried task, a repeated run or two scouts racing each other write it once. Rows
--    without a key (the llm_agent's save_insight tool) are unaffected.
--    The keys (agents/store/insights.py):
--      <kind>:run:<workflow_run_id>:<agent_id>  a business agent's run in a workflow run,
--      <kind>:task:<task_id>                    ... or outside one;
--      signal:<stream_id | org>:<company_id>:<source key>  one scout signal per scope,
--        the source key naming the filing (Companies House transaction id) or the page
--        and the openings it lists.
--
-- 2. company_filings: a company's filing history as Companies House lists it
--    (GET /company/{number}/filing-history: category, type, date, description,
--    description_values, transaction_id). The scout keeps what it read there; the demo
--    loads the generator's histories (source 'generated'). Offline, the scout and the
--    enrichment agent read their filing signals from here. Keyed by the filing's
--    transaction id within the company, so a filing is stored once however often it is
--    read; cascades with its company.

ALTER TABLE stream_insights
    ADD COLUMN dedupe_key text NULL CHECK (length(dedupe_key) BETWEEN 1 AND 500);

CREATE UNIQUE INDEX stream_insights_dedupe_key_idx
    ON stream_insights (org_id, dedupe_key) WHERE dedupe_key IS NOT NULL;
CREATE INDEX stream_insights_kind_idx ON stream_insights (kind, created_at DESC);

CREATE TABLE company_filings (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL DEFAULT runner_default_org_id() REFERENCES organizations (id),
    company_id uuid NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    transaction_id text NOT NULL CHECK (length(transaction_id) BETWEEN 1 AND 200),
    -- 'capital', 'officers', 'accounts', 'mortgage', 'change-of-name', ...
    category text NOT NULL DEFAULT '',
    -- the form: 'SH01', 'AP01', 'TM01', 'AA', 'MR01', 'NM01', 'CS01', ...
    type text NOT NULL DEFAULT '',
    -- "date" in the API: when the filing was processed
    filed_on date NOT NULL,
    -- the API's description key ('capital-allotment-shares') and its values
    description text NOT NULL DEFAULT '',
    description_values jsonb NOT NULL DEFAULT '{}'
        CHECK (jsonb_typeof(description_values) = 'object'),
    source text NOT NULL DEFAULT 'companies_house'
        CHECK (source IN ('companies_house', 'generated', 'import')),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (company_id, transaction_id)
);

CREATE INDEX company_filings_recent_idx ON company_filings (company_id, filed_on DESC);
CREATE INDEX company_filings_source_idx ON company_filings (source) WHERE source <> 'companies_house';

-- The new agent type, so that `INSERT INTO ai_agents (name, agent_type) VALUES ('x',
-- 'scout_agent')` works right after the migration, as 0006 does for the others; the
-- next refresh (migrate, a daemon start) rewrites the row from what it loads.
INSERT INTO agent_types (agent_type, module, distribution, takes_stream_id, takes_goal_context)
VALUES ('scout_agent', 'agents.scout_agent:ScoutAgent', 'agent-runner', true, false)
ON CONFLICT (agent_type) DO NOTHING;
