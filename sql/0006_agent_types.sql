-- Agent types are plugins (CONTRACT.md, "Agent types are plugins").
--
-- The runner finds agent types through the Python entry-point group
-- agent_runner.agents; a package installed beside it adds types without a migration.
-- So the hand-kept CHECK list on ai_agents.agent_type gives way to a table of the types
-- some agent-runner could load: `agent-runner migrate` and every daemon at start upsert
-- the types they load (runner/store/agent_types.py). Types are never removed from it:
-- rows of ai_agents may still name a type whose package was uninstalled since, and a
-- daemon that lacks it fails such tasks with "no implementation for agent_type".

CREATE TABLE agent_types (
    -- The entry point's name, which must equal the class's agent_type (runner/plugins.py
    -- refuses a mismatch). It becomes a Prometheus label value, hence the narrow shape.
    agent_type text PRIMARY KEY CHECK (agent_type ~ '^[a-z][a-z0-9_]{0,62}$'),
    -- Where the type was loaded from: the entry point's value, module:Class.
    module text NOT NULL,
    -- The installed distribution that registered it ("name version"), when known.
    distribution text NULL,
    -- Which keys of a workflow run the type's Input model declares: a workflow step is
    -- enqueued with exactly these (runner_workflow_payload below). Derived from the
    -- model's fields by the runner, never written by hand.
    takes_stream_id boolean NOT NULL DEFAULT false,
    takes_goal_context boolean NOT NULL DEFAULT false,
    -- When a migrate or a daemon start last loaded it.
    seen_at timestamptz NOT NULL DEFAULT now()
);

-- The types this project ships, so that `INSERT INTO ai_agents (name, agent_type)
-- VALUES ('x', 'noop')` works right after the migration, before any refresh; the first
-- refresh rewrites these rows from what it actually loads.
INSERT INTO agent_types (agent_type, module, distribution, takes_stream_id, takes_goal_context)
VALUES ('enrichment_agent', 'agents.enrichment_agent:EnrichmentAgent', 'agent-runner', true, false),
       ('llm_agent', 'agents.llm_agent:LLMAgent', 'agent-runner', false, false),
       ('noop', 'agents.noop:NoopAgent', 'agent-runner', false, false),
       ('opportunity_bot', 'agents.opportunity_bot:OpportunityBot', 'agent-runner', true, true),
       ('scoring_agent', 'agents.scoring_agent:ScoringAgent', 'agent-runner', true, true);

-- The inline CHECK of 0001_core.sql (PostgreSQL named it <table>_<column>_check).
ALTER TABLE ai_agents DROP CONSTRAINT ai_agents_agent_type_check;

-- In its place: a type some agent-runner has registered. A trigger rather than a
-- foreign key, so that the refusal names the known types (as the CHECK list used to
-- show them) and says how to add one.
CREATE FUNCTION runner_ai_agents_check_agent_type() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    known text;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.agent_type IS NOT DISTINCT FROM OLD.agent_type THEN
        RETURN NEW;
    END IF;
    IF NEW.agent_type IS NOT NULL
       AND EXISTS (SELECT 1 FROM agent_types WHERE agent_type = NEW.agent_type) THEN
        RETURN NEW;
    END IF;
    SELECT string_agg(agent_type, ', ' ORDER BY agent_type) INTO known FROM agent_types;
    RAISE EXCEPTION 'unknown agent_type "%" for agent "%"; known types: %',
        NEW.agent_type, NEW.name, coalesce(known, '(none)')
        USING ERRCODE = 'check_violation',
              HINT = 'install the package that provides the type, then run '
                     '`agent-runner migrate` (or start a daemon) to register it';
END;
$$;

CREATE TRIGGER ai_agents_check_agent_type BEFORE INSERT OR UPDATE OF agent_type ON ai_agents
    FOR EACH ROW EXECUTE FUNCTION runner_ai_agents_check_agent_type();

-- What a workflow step is run with: its configured payload plus exactly the run's keys
-- its agent type takes (every agent refuses unknown keys). Replaces 0005's hand-kept
-- list of types with the flags the runner derives from each type's Input model; a type
-- this table does not know gets only its configured payload. STABLE now: it reads a
-- table.
CREATE OR REPLACE FUNCTION runner_workflow_payload(
    p_agent_type text, p_configuration jsonb, p_stream_id uuid, p_goal_context jsonb)
    RETURNS jsonb
    LANGUAGE sql STABLE AS $$
    SELECT runner_agent_payload(p_configuration)
           || CASE WHEN t.takes_stream_id
                   THEN jsonb_build_object('stream_id', p_stream_id) ELSE '{}'::jsonb END
           || CASE WHEN t.takes_goal_context
                   THEN jsonb_build_object('goal_context', p_goal_context) ELSE '{}'::jsonb END
    FROM (SELECT coalesce(bool_or(takes_stream_id), false) AS takes_stream_id,
                 coalesce(bool_or(takes_goal_context), false) AS takes_goal_context
          FROM agent_types WHERE agent_type = p_agent_type) AS t
$$;
