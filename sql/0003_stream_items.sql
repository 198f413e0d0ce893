-- Stream items: one row per company in a stream (seed 004), with the discovery
-- estimate, the enrichment state and the score.
--
-- Who writes what:
--   opportunity_bot  inserts items (discovery_score, a first quality_score/priority and
--                    sub-scores from the data available, qualified, buying_signals);
--   enrichment_agent moves enrichment_status off 'pending' and sets enriched_at;
--   scoring_agent    rewrites the sub-scores, quality_score, priority, position,
--                    qualified, score_details, buying_signals and scored_at.
-- All of them write only in the transaction that completes their task (commit hooks),
-- and set updated_at themselves.
--
-- The score (agents/lead_scoring.py has the full definitions):
--   quality_score = criteria_match * 2 + data_completeness + enrichment_quality
--                   + buying_signal_score, each sub-score in 0..1, so 0..5;
--   criteria_match      fraction of the goal's criteria (industry, location, employee
--                       range) the company meets; 0 when it is no longer active;
--   data_completeness   fraction of ten key register fields present;
--   enrichment_quality  0.2 per enrichment indicator (enriched, website, tech stack,
--                       officers, social presence);
--   buying_signal_score min(1, sum of the strengths of the signals found).
--   priority: critical >= 4.5, high >= 4.0, medium >= 3.0, else low.
--
-- added_by_task_id / added_by_execution_id record provenance without foreign keys, so
-- an item outlives the clean-up of old tasks.

CREATE TABLE stream_items (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL DEFAULT runner_default_org_id() REFERENCES organizations (id),
    stream_id uuid NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    company_id uuid NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    added_by_task_id uuid NULL,
    added_by_execution_id uuid NULL,
    -- the score reached min_quality_score of the goal it was last scored against
    qualified boolean NOT NULL DEFAULT false,
    -- the opportunity bot's estimate when it added the item (same formula, data then)
    discovery_score numeric NULL
        CONSTRAINT stream_items_discovery_score_range CHECK (discovery_score BETWEEN 0 AND 5),
    quality_score numeric(4, 2) NULL
        CONSTRAINT stream_items_quality_score_range CHECK (quality_score BETWEEN 0 AND 5),
    priority text NULL
        CONSTRAINT stream_items_priority_vocabulary CHECK (priority IN (
            'critical', 'high', 'medium', 'low')),
    -- order in the stream after the last scoring: 1 = best; NULL until first scored
    position integer NULL CONSTRAINT stream_items_position_positive CHECK (position >= 1),
    criteria_match numeric NULL
        CONSTRAINT stream_items_criteria_match_range CHECK (criteria_match BETWEEN 0 AND 1),
    data_completeness numeric NULL
        CONSTRAINT stream_items_data_completeness_range CHECK (data_completeness BETWEEN 0 AND 1),
    enrichment_quality numeric NULL
        CONSTRAINT stream_items_enrichment_quality_range CHECK (enrichment_quality BETWEEN 0 AND 1),
    buying_signal_score numeric NULL
        CONSTRAINT stream_items_buying_signal_score_range CHECK (buying_signal_score BETWEEN 0 AND 1),
    -- how the score came about: criteria met, employee estimate and its basis, counts,
    -- and the figures the next scoring compares with to see growth
    score_details jsonb NOT NULL DEFAULT '{}'
        CONSTRAINT stream_items_score_details_object CHECK (jsonb_typeof(score_details) = 'object'),
    -- [{"type", "strength", "source", "detail"}, ...]; source 'derived' = the scoring
    -- rules' own, recomputed on every scoring; other agents' entries are kept
    buying_signals jsonb NOT NULL DEFAULT '[]'
        CONSTRAINT stream_items_buying_signals_array CHECK (jsonb_typeof(buying_signals) = 'array'),
    enrichment_status text NOT NULL DEFAULT 'pending'
        CONSTRAINT stream_items_enrichment_status_vocabulary CHECK (enrichment_status IN (
            'pending', 'enriched', 'not_found', 'failed')),
    enriched_at timestamptz NULL,
    scored_at timestamptz NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT stream_items_stream_company_key UNIQUE (stream_id, company_id)
)
-- Scoring rewrites every item of a stream and touches no indexed column, so with room
-- left in each page the new versions are HOT updates: no index is written. That is
-- why position, score and priority are deliberately not indexed; reading a stream in
-- order is a filter on (stream_id, ...) and a sort, which is cheap at stream sizes.
WITH (fillfactor = 50);

-- The enrichment agent's "still pending" scan.
CREATE INDEX stream_items_stream_enrichment_idx ON stream_items (stream_id, enrichment_status);
-- Deleting a company cascades here; without this index every delete scans the table.
CREATE INDEX stream_items_company_idx ON stream_items (company_id);
