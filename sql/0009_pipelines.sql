-- Pipelines run by themselves (CONTRACT.md, "Pipelines run by themselves"; issue 11).
--
-- 1. Triggering the first agent runs the chain. A task of an agent whose payload names
--    a stream (payload.stream_id) where that agent is actively assigned, and that is
--    not part of a run yet, starts a run of the stream's workflow rooted at that agent:
--    the run's plan is the agent and every active assignment downstream of it. This
--    holds however the task is made (INSERT, enqueue_agent_task, the CLI, an agent's
--    cron): a BEFORE INSERT trigger creates the run and its plan and names the run on
--    the task; an AFTER INSERT trigger binds the root step to the task once the row
--    exists. From there on the run is an ordinary run (runner_workflow_advance, 0005):
--    fan-in, the failure policy, one task per agent per run.
-- 2. Stream schedules: streams.schedule_cron / schedule_timezone, the agents' grammar
--    and validation, announced on agent_runner_schedules. Each fire is claimed in
--    stream_cron_fires (stream, fire time) and starts one
--    trigger_stream_workflow(stream, 'scheduled'), unless a scheduled run of the stream
--    is still going: then the fire is recorded as skipped.
-- 3. The stream_progress view.

-- =====================================================================================
-- Runs rooted at an agent
-- =====================================================================================

-- The agent a run started at, when a task of it started the run; NULL for a run of the
-- whole workflow (trigger_stream_workflow).
ALTER TABLE workflow_runs
    ADD COLUMN root_agent_id uuid NULL REFERENCES ai_agents (id) ON DELETE SET NULL;

-- A run's plan: one workflow_run_steps row per assignment that takes part, the steps
-- that will not start by configuration marked with the reason, and each step's depth.
-- p_root_agent NULL: every active assignment of the stream (trigger_stream_workflow).
-- Otherwise: that agent and the active assignments downstream of it. The root step has
-- no dependencies in the run (its task is the one that started it); a step downstream
-- that also depends on an agent outside the run does not start, as a step that depends
-- on an inactive assignment does not: a step starts only when all its dependencies
-- completed in the same run. Returns the number of steps.
CREATE FUNCTION runner_workflow_plan(p_run_id uuid, p_stream_id uuid, p_root_agent uuid)
    RETURNS integer
    LANGUAGE plpgsql AS $$
DECLARE
    in_run uuid[];
    frontier uuid[];
    steps integer;
    changed integer;
    root_name text;
BEGIN
    SELECT name INTO root_name FROM ai_agents WHERE id = p_root_agent;
    IF p_root_agent IS NULL THEN
        INSERT INTO workflow_run_steps (workflow_run_id, agent_id, depends_on, execution_order,
                                        auto_execute)
        SELECT p_run_id, sa.agent_id, sa.depends_on_agent_ids, sa.execution_order,
               sa.auto_execute
        FROM stream_agent_assignments sa
        WHERE sa.stream_id = p_stream_id AND sa.is_active;
        GET DIAGNOSTICS steps = ROW_COUNT;
    ELSE
        -- Downstream along every assignment, active or not, so that a step below an
        -- inactive one is in the plan, not started, as in a run of the whole workflow.
        -- Cycles are refused on write; in_run bounds the walk even so.
        in_run := ARRAY[p_root_agent];
        frontier := ARRAY[p_root_agent];
        LOOP
            SELECT coalesce(array_agg(sa.agent_id), '{}') INTO frontier
            FROM stream_agent_assignments sa
            WHERE sa.stream_id = p_stream_id AND sa.depends_on_agent_ids && frontier
              AND NOT sa.agent_id = ANY (in_run);
            EXIT WHEN cardinality(frontier) = 0;
            in_run := in_run || frontier;
        END LOOP;
        INSERT INTO workflow_run_steps (workflow_run_id, agent_id, depends_on, execution_order,
                                        auto_execute)
        SELECT p_run_id, sa.agent_id,
               CASE WHEN sa.agent_id = p_root_agent THEN '{}'::uuid[]
                    ELSE sa.depends_on_agent_ids END,
               sa.execution_order, sa.auto_execute
        FROM stream_agent_assignments sa
        WHERE sa.stream_id = p_stream_id AND sa.is_active AND sa.agent_id = ANY (in_run);
        GET DIAGNOSTICS steps = ROW_COUNT;
    END IF;
    IF steps = 0 THEN
        RETURN 0;
    END IF;

    -- Steps that will not start by configuration: a dependency with no step in the run.
    UPDATE workflow_run_steps st
    SET status = 'not_started',
        reason = CASE
            WHEN missing.assigned THEN
                format('not started: depends on agent "%s", which is not part of this run '
                       '(it started at agent "%s")', missing.name, root_name)
            ELSE format('not started: depends on %s, which has no active assignment in the stream',
                        coalesce(format('agent "%s"', missing.name), missing.agent_id::text))
        END
    FROM (SELECT DISTINCT ON (x.agent_id) x.agent_id AS step_agent, d AS agent_id, a.name,
                 EXISTS (SELECT 1 FROM stream_agent_assignments sa
                         WHERE sa.stream_id = p_stream_id AND sa.agent_id = d
                           AND sa.is_active) AS assigned
          FROM workflow_run_steps x
          CROSS JOIN unnest(x.depends_on) d
          LEFT JOIN ai_agents a ON a.id = d
          WHERE x.workflow_run_id = p_run_id
            AND NOT EXISTS (SELECT 1 FROM workflow_run_steps y
                            WHERE y.workflow_run_id = p_run_id AND y.agent_id = d)
          ORDER BY x.agent_id, d) missing
    WHERE st.workflow_run_id = p_run_id AND st.agent_id = missing.step_agent;

    -- auto_execute means "start when the parents complete"; a root is started by the
    -- trigger (or is the task that started the run), so it ignores it.
    UPDATE workflow_run_steps
    SET status = 'not_started', reason = 'not started: auto_execute is off for this assignment'
    WHERE workflow_run_id = p_run_id AND status = 'waiting'
      AND cardinality(depends_on) > 0 AND NOT auto_execute;

    -- depth = longest chain of parents, level by level (a recursive CTE would walk
    -- every path, exponential in a dense graph).
    UPDATE workflow_run_steps SET depth = 0
    WHERE workflow_run_id = p_run_id AND cardinality(depends_on) = 0;
    LOOP
        UPDATE workflow_run_steps st
        SET depth = 1 + (SELECT max(p.depth) FROM workflow_run_steps p
                         WHERE p.workflow_run_id = p_run_id AND p.agent_id = ANY (st.depends_on))
        WHERE st.workflow_run_id = p_run_id AND st.depth IS NULL
          AND NOT EXISTS (SELECT 1 FROM unnest(st.depends_on) d
                          JOIN workflow_run_steps p
                            ON p.workflow_run_id = p_run_id AND p.agent_id = d
                          WHERE p.depth IS NULL)
          AND EXISTS (SELECT 1 FROM workflow_run_steps p
                      WHERE p.workflow_run_id = p_run_id AND p.agent_id = ANY (st.depends_on));
        GET DIAGNOSTICS changed = ROW_COUNT;
        EXIT WHEN changed = 0;
    END LOOP;
    RETURN steps;
END;
$$;

-- trigger_stream_workflow's body, as in 0005, with the plan in runner_workflow_plan
-- (shared with the runs a task starts). Same checks, same messages.
CREATE OR REPLACE FUNCTION runner_workflow_trigger(p_stream uuid, p_trigger text, p_priority integer)
    RETURNS uuid
    LANGUAGE plpgsql AS $$
DECLARE
    s streams%ROWTYPE;
    run_id uuid;
BEGIN
    IF p_trigger IS NULL OR p_trigger NOT IN ('manual', 'scheduled') THEN
        RAISE EXCEPTION 'trigger must be ''manual'' or ''scheduled'', got %', quote_nullable(p_trigger)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_priority IS NULL OR p_priority NOT BETWEEN 1 AND 10 THEN
        RAISE EXCEPTION 'priority must be between 1 and 10, got %', p_priority
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT * INTO s FROM streams WHERE id = p_stream;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown stream: %', p_stream USING ERRCODE = 'no_data_found';
    END IF;

    INSERT INTO workflow_runs (org_id, stream_id, trigger, priority, goal_context)
    VALUES (s.org_id, s.id, p_trigger, p_priority,
            jsonb_build_object('goal_criteria', s.goal_criteria,
                               'target_metrics', s.target_metrics))
    RETURNING id INTO run_id;

    IF runner_workflow_plan(run_id, s.id, NULL) = 0 THEN
        RAISE EXCEPTION 'stream "%" has no active agent assignments', s.name
            USING ERRCODE = 'no_data_found';
    END IF;

    PERFORM runner_workflow_advance(run_id);

    IF NOT EXISTS (SELECT 1 FROM workflow_run_steps
                   WHERE workflow_run_id = run_id AND status = 'enqueued') THEN
        RAISE EXCEPTION 'nothing to run in stream "%": %', s.name,
            coalesce((SELECT string_agg(format('%s: %s', a.name, st.reason), '; '
                                        ORDER BY st.execution_order, a.name)
                      FROM workflow_run_steps st JOIN ai_agents a ON a.id = st.agent_id
                      WHERE st.workflow_run_id = run_id),
                     'no step can start')
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN run_id;
END;
$$;

-- BEFORE INSERT on agent_tasks (after agent_tasks_before_insert, which validated the
-- row: triggers of one event fire in name order). A task that names a stream where its
-- agent is actively assigned, and no run, starts a run rooted at its agent.
--   * trigger: the task's own, 'manual' or 'scheduled' (an agent's cron).
--   * priority: the task's; every step of the run gets it.
--   * goal: the stream's goal, with the sections the payload's goal_context gives
--     (goal_criteria, target_metrics) taking their place, so that every step works to
--     the goal the first one was given.
CREATE FUNCTION runner_agent_tasks_start_run() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    stream_text text := NEW.payload ->> 'stream_id';
    s streams%ROWTYPE;
    given jsonb := NEW.payload -> 'goal_context';
    run_id uuid;
BEGIN
    -- The forms of a UUID the agents' payload models accept (with or without hyphens).
    IF stream_text IS NULL
       OR stream_text !~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$' THEN
        RETURN NEW;
    END IF;
    SELECT st.* INTO s
    FROM streams st JOIN stream_agent_assignments sa ON sa.stream_id = st.id
    WHERE st.id = stream_text::uuid AND sa.agent_id = NEW.agent_id AND sa.is_active;
    IF NOT FOUND THEN
        RETURN NEW;
    END IF;
    IF jsonb_typeof(given) IS DISTINCT FROM 'object' THEN
        given := '{}';
    END IF;
    INSERT INTO workflow_runs (org_id, stream_id, trigger, priority, goal_context, root_agent_id)
    VALUES (s.org_id, s.id, NEW.trigger, NEW.priority,
            jsonb_build_object(
                'goal_criteria', CASE WHEN jsonb_typeof(given -> 'goal_criteria') = 'object'
                                      THEN given -> 'goal_criteria' ELSE s.goal_criteria END,
                'target_metrics', CASE WHEN jsonb_typeof(given -> 'target_metrics') = 'object'
                                       THEN given -> 'target_metrics' ELSE s.target_metrics END),
            NEW.agent_id)
    RETURNING id INTO run_id;
    PERFORM runner_workflow_plan(run_id, s.id, NEW.agent_id);
    NEW.workflow_run_id := run_id;
    RETURN NEW;
END;
$$;

CREATE TRIGGER agent_tasks_start_run BEFORE INSERT ON agent_tasks
    FOR EACH ROW
    WHEN (NEW.workflow_run_id IS NULL AND NEW.trigger IN ('manual', 'scheduled')
          AND jsonb_typeof(NEW.payload -> 'stream_id') = 'string')
    EXECUTE FUNCTION runner_agent_tasks_start_run();

-- AFTER INSERT: the root step of a run the task started now points at the task (a
-- foreign key, so not before the row exists), its assignment counts the execution,
-- and the run is brought up to date (steps below ones that will not start are marked).
-- The roots trigger_stream_workflow enqueues pass through here too and match nothing:
-- their run has no root agent.
CREATE FUNCTION runner_agent_tasks_bind_run_root() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    run_stream uuid;
BEGIN
    SELECT r.stream_id INTO run_stream
    FROM workflow_runs r
    WHERE r.id = NEW.workflow_run_id AND r.root_agent_id = NEW.agent_id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE workflow_run_steps
    SET status = 'enqueued', task_id = NEW.id, updated_at = now()
    WHERE workflow_run_id = NEW.workflow_run_id AND agent_id = NEW.agent_id
      AND status = 'waiting' AND task_id IS NULL;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE stream_agent_assignments
    SET total_executions = total_executions + 1, last_executed_at = now()
    WHERE stream_id = run_stream AND agent_id = NEW.agent_id;
    PERFORM runner_workflow_advance(NEW.workflow_run_id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER agent_tasks_bind_run_root AFTER INSERT ON agent_tasks
    FOR EACH ROW
    WHEN (NEW.workflow_run_id IS NOT NULL AND NEW.trigger IN ('manual', 'scheduled')
          AND cardinality(NEW.parent_task_ids) = 0)
    EXECUTE FUNCTION runner_agent_tasks_bind_run_root();

-- =====================================================================================
-- Stream schedules
-- =====================================================================================

ALTER TABLE streams
    ADD COLUMN schedule_cron text NULL,
    ADD COLUMN schedule_timezone text NOT NULL DEFAULT 'UTC',
    -- when the current expression / time zone took effect: a fire before it is not
    -- "missed" and never caught up
    ADD COLUMN schedule_changed_at timestamptz NOT NULL DEFAULT now();

-- The agents' checks (0005), with "stream" in the messages.
CREATE FUNCTION runner_streams_check_schedule() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    problem text;
BEGIN
    IF TG_OP = 'INSERT' OR NEW.schedule_cron IS DISTINCT FROM OLD.schedule_cron THEN
        problem := runner_cron_problem(NEW.schedule_cron);
        IF problem IS NOT NULL THEN
            RAISE EXCEPTION 'invalid schedule_cron "%" for stream "%": %',
                NEW.schedule_cron, NEW.name, problem
                USING ERRCODE = 'check_violation',
                      HINT = 'use 5 fields (minute hour day-of-month month day-of-week) '
                             'or 6 with seconds first, e.g. ''0 9 * * MON-FRI''';
        END IF;
    END IF;
    IF TG_OP = 'INSERT' OR NEW.schedule_timezone IS DISTINCT FROM OLD.schedule_timezone THEN
        IF NEW.schedule_timezone IS NULL OR NOT EXISTS (
                SELECT 1 FROM pg_timezone_names WHERE name = NEW.schedule_timezone) THEN
            RAISE EXCEPTION 'invalid schedule_timezone for stream "%": unknown time zone "%"',
                NEW.name, NEW.schedule_timezone
                USING ERRCODE = 'check_violation',
                      HINT = 'use a name from pg_timezone_names, e.g. ''Europe/London''';
        END IF;
    END IF;
    IF TG_OP = 'INSERT' THEN
        NEW.schedule_changed_at := now();
    ELSIF (NEW.schedule_cron, NEW.schedule_timezone)
          IS DISTINCT FROM (OLD.schedule_cron, OLD.schedule_timezone) THEN
        NEW.schedule_changed_at := now();
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER streams_check_schedule
    BEFORE INSERT OR UPDATE OF schedule_cron, schedule_timezone ON streams
    FOR EACH ROW EXECUTE FUNCTION runner_streams_check_schedule();

-- Every daemon's scheduler reloads on agent_runner_schedules, whatever the payload;
-- a stream's is 'stream:<id>' (an agent's is its id).
CREATE FUNCTION runner_streams_notify_schedule() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.schedule_cron IS NOT NULL THEN
            PERFORM pg_notify('agent_runner_schedules', 'stream:' || OLD.id);
        END IF;
    ELSIF TG_OP = 'INSERT' THEN
        IF NEW.schedule_cron IS NOT NULL THEN
            PERFORM pg_notify('agent_runner_schedules', 'stream:' || NEW.id);
        END IF;
    ELSIF (NEW.schedule_cron, NEW.schedule_timezone)
          IS DISTINCT FROM (OLD.schedule_cron, OLD.schedule_timezone) THEN
        PERFORM pg_notify('agent_runner_schedules', 'stream:' || NEW.id);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER streams_notify_schedule
    AFTER INSERT OR UPDATE OF schedule_cron, schedule_timezone OR DELETE ON streams
    FOR EACH ROW EXECUTE FUNCTION runner_streams_notify_schedule();

-- One row per (stream, fire time) some daemon claimed. The primary key makes a fire
-- happen once across daemons: each daemon tries the insert, one wins.
CREATE TABLE stream_cron_fires (
    stream_id uuid NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    fire_time timestamptz NOT NULL,
    -- started: the fire started workflow_run_id;
    -- skipped: a scheduled run of the stream was still going (note names it);
    -- failed:  the run could not start (note has trigger_stream_workflow's error)
    outcome text NOT NULL CHECK (outcome IN ('started', 'skipped', 'failed')),
    workflow_run_id uuid NULL REFERENCES workflow_runs (id) ON DELETE SET NULL,
    note text NULL,
    daemon_id uuid NULL,               -- no foreign key: daemon rows come and go
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream_id, fire_time)
);

CREATE INDEX stream_cron_fires_run_idx ON stream_cron_fires (workflow_run_id)
    WHERE workflow_run_id IS NOT NULL;

-- Claims one fire of a stream's schedule and starts its run, in the caller's
-- transaction.
--   outcome 'started'   this call won the fire; workflow_run_id is the new run
--           'skipped'   this call won the fire, but a scheduled run of the stream is
--                       still going (workflow_run_id names it): no second run
--           'failed'    this call won the fire, but no run could start (note says why,
--                       e.g. no active assignments); the next fire tries again
--           'duplicate' another daemon (or an earlier call) already claimed it
--           'stale'     the stream's schedule changed since the caller loaded it
--           'gone'      the stream no longer exists
CREATE FUNCTION runner_stream_cron_fire(
    p_stream_id uuid, p_fire_time timestamptz, p_schedule_cron text,
    p_schedule_timezone text, p_daemon_id uuid DEFAULT NULL)
    RETURNS TABLE (outcome text, workflow_run_id uuid, note text)
    LANGUAGE plpgsql AS $$
DECLARE
    s streams%ROWTYPE;
    going workflow_runs%ROWTYPE;
    run_id uuid;
    problem text;
BEGIN
    -- FOR NO KEY UPDATE: fires of one stream (a catch-up and an on-time fire, say)
    -- decide one after the other, so the second sees the run the first started; and
    -- nobody reschedules the stream between the check and the claim.
    SELECT * INTO s FROM streams WHERE id = p_stream_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'gone'::text, NULL::uuid, NULL::text;
        RETURN;
    END IF;
    IF s.schedule_cron IS DISTINCT FROM p_schedule_cron
       OR s.schedule_timezone IS DISTINCT FROM p_schedule_timezone THEN
        RETURN QUERY SELECT 'stale'::text, NULL::uuid, NULL::text;
        RETURN;
    END IF;
    INSERT INTO stream_cron_fires (stream_id, fire_time, outcome, daemon_id)
    VALUES (p_stream_id, p_fire_time, 'started', p_daemon_id)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'duplicate'::text, NULL::uuid, NULL::text;
        RETURN;
    END IF;

    -- "Still going": nothing of it is left running or waiting (completed_at is set
    -- then, also for a run that failed while another branch finished).
    SELECT * INTO going FROM workflow_runs r
    WHERE r.stream_id = p_stream_id AND r.trigger = 'scheduled' AND r.completed_at IS NULL
    ORDER BY r.created_at LIMIT 1;
    IF FOUND THEN
        UPDATE stream_cron_fires f
        SET outcome = 'skipped', workflow_run_id = going.id,
            note = format('skipped: the scheduled run %s started at %s is still going',
                          going.id, going.created_at)
        WHERE f.stream_id = p_stream_id AND f.fire_time = p_fire_time
        RETURNING f.note INTO problem;
        RETURN QUERY SELECT 'skipped'::text, going.id, problem;
        RETURN;
    END IF;

    BEGIN
        run_id := runner_workflow_trigger(p_stream_id, 'scheduled', 5);
    EXCEPTION WHEN data_exception OR integrity_constraint_violation OR no_data_found THEN
        -- The stream cannot run as it is (no active assignments, every root disabled):
        -- recorded on the fire, where `agent-runner streams show` finds it.
        problem := SQLERRM;
    END;
    IF run_id IS NULL THEN
        UPDATE stream_cron_fires f SET outcome = 'failed', note = problem
        WHERE f.stream_id = p_stream_id AND f.fire_time = p_fire_time;
        RETURN QUERY SELECT 'failed'::text, NULL::uuid, problem;
        RETURN;
    END IF;
    UPDATE stream_cron_fires f SET workflow_run_id = run_id
    WHERE f.stream_id = p_stream_id AND f.fire_time = p_fire_time;
    RETURN QUERY SELECT 'started'::text, run_id, NULL::text;
END;
$$;

-- =====================================================================================
-- Progress
-- =====================================================================================

-- One row per stream: its items and how far they got, the goal's target, its last run.
--   items      stream_items rows
--   target     target_metrics.companies_to_find (NULL when the goal does not say)
--   enriched   items the enrichment agent found data for (enrichment_status 'enriched';
--              'not_found' and 'failed' items were tried but are not counted)
--   scored     items the scoring agent has scored (scored_at set)
--   qualified  items whose score reached the goal's min_quality_score
--   critical, high, medium, low   items by priority
--   last_run_* the stream's latest workflow run: id, status, when it started
CREATE VIEW stream_progress AS
SELECT s.id AS stream_id,
       i.items,
       -- nested, not AND-ed: SQL does not promise to skip the cast of a text
       CASE WHEN jsonb_typeof(s.target_metrics -> 'companies_to_find') = 'number' THEN
           CASE WHEN (s.target_metrics ->> 'companies_to_find')::numeric BETWEEN 0 AND 2147483647
                THEN floor((s.target_metrics ->> 'companies_to_find')::numeric)::integer
           END
       END AS target,
       i.enriched,
       i.scored,
       i.qualified,
       i.critical,
       i.high,
       i.medium,
       i.low,
       r.id AS last_run_id,
       r.status AS last_run_status,
       r.created_at AS last_run_at
FROM streams s
CROSS JOIN LATERAL (
    SELECT count(*) AS items,
           count(*) FILTER (WHERE si.enrichment_status = 'enriched') AS enriched,
           count(*) FILTER (WHERE si.scored_at IS NOT NULL) AS scored,
           count(*) FILTER (WHERE si.qualified) AS qualified,
           count(*) FILTER (WHERE si.priority = 'critical') AS critical,
           count(*) FILTER (WHERE si.priority = 'high') AS high,
           count(*) FILTER (WHERE si.priority = 'medium') AS medium,
           count(*) FILTER (WHERE si.priority = 'low') AS low
    FROM stream_items si
    WHERE si.stream_id = s.id) i
LEFT JOIN LATERAL (
    SELECT wr.id, wr.status, wr.created_at
    FROM workflow_runs wr
    WHERE wr.stream_id = s.id
    ORDER BY wr.created_at DESC, wr.id DESC
    LIMIT 1) r ON true;
