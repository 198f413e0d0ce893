-- Workflows and cron, exactly once by construction.
--
-- Workflows: trigger_stream_workflow() snapshots a stream's active assignments into a
-- run (workflow_runs + one workflow_run_steps row per assignment) and enqueues the
-- steps without dependencies. Every later step is enqueued by a trigger on
-- agent_tasks, in the very transaction that completes its last parent, so a crash can
-- never separate "parent completed" from "child enqueued". All advancing of one run is
-- serialised on its workflow_runs row, and a unique index on
-- agent_tasks (workflow_run_id, agent_id) makes a second task for a step impossible,
-- whatever the interleaving.
--
-- Cron: schedule_cron and schedule_timezone are validated on write (the grammar has a
-- Python twin in runner/scheduler.py; tests/unit/test_cron_grammar.py runs one table
-- of cases against both), changes are announced on the agent_runner_schedules
-- channel, and every fire is claimed in cron_fires (agent, fire time) before its task
-- is enqueued, so N daemons produce one task per fire time.

-- =====================================================================================
-- Cron grammar
-- =====================================================================================
--
--   5 fields:  minute hour day-of-month month day-of-week
--   6 fields:  second minute hour day-of-month month day-of-week
--   each field is a comma-separated list of items:
--     *   *\/n   v   a-b   a-b/n          (v, a, b: numbers, or names where allowed)
--   second 0-59, minute 0-59, hour 0-23, day-of-month 1-31,
--   month 1-12 or JAN-DEC, day-of-week 0-7 or SUN-SAT (0 and 7 are Sunday);
--   names are case-insensitive; a step is 1 up to the field's maximum.
-- Like Vixie cron: when day-of-month and day-of-week both start with something other
-- than "*", a day matching EITHER fires; otherwise both must match. An expression that
-- can never fire (day-of-month 30 in February only) is refused.
--
-- The functions return a problem description, or NULL when the text is valid, so the
-- tests can compare them with the Python messages word for word.

-- One token of a field: a number or (where the field has names) a three-letter name.
CREATE FUNCTION runner_cron_value(
    p_token text, p_min integer, p_max integer, p_names text[], p_name_base integer,
    OUT value integer, OUT problem text)
    LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_token ~ '^[0-9]+$' THEN
        -- more than four digits is out of range whatever the field (and would overflow)
        IF length(p_token) <= 4 THEN
            value := p_token::integer;
        END IF;
        IF value IS NULL OR value NOT BETWEEN p_min AND p_max THEN
            value := NULL;
            problem := format('%s is out of range %s-%s', p_token, p_min, p_max);
        END IF;
        RETURN;
    END IF;
    IF p_names IS NOT NULL AND p_token ~ '^[A-Za-z]{3}$'
       AND array_position(p_names, upper(p_token)) IS NOT NULL THEN
        value := array_position(p_names, upper(p_token)) - 1 + p_name_base;
        RETURN;
    END IF;
    IF p_names IS NULL THEN
        problem := format('"%s" is not a number', p_token);
    ELSIF p_name_base = 1 THEN
        problem := format('"%s" is not a number or a month name (JAN-DEC)', p_token);
    ELSE
        problem := format('"%s" is not a number or a day name (SUN-SAT)', p_token);
    END IF;
END;
$$;

-- One field: the set of values it selects, or the problem.
CREATE FUNCTION runner_cron_field(
    p_text text, p_field text, p_min integer, p_max integer, p_names text[],
    p_name_base integer, OUT vals integer[], OUT problem text)
    LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    item text;
    base text;
    step_text text;
    step integer;
    lo record;
    hi record;
    detail text;
BEGIN
    vals := '{}';
    FOREACH item IN ARRAY string_to_array(p_text, ',') LOOP
        detail := NULL;
        step := 1;
        base := item;
        step_text := NULL;
        IF position('/' IN item) > 0 THEN
            base := substr(item, 1, position('/' IN item) - 1);
            step_text := substr(item, position('/' IN item) + 1);
            -- nested, not AND-ed: SQL does not promise to skip the cast of a bad text
            IF step_text ~ '^[0-9]+$' THEN
                IF length(step_text) <= 4 THEN
                    step := step_text::integer;
                ELSE
                    step := p_max + 1;
                END IF;
            END IF;
        END IF;
        IF item = '' THEN
            detail := 'empty list item';
        ELSIF step_text IS NOT NULL AND step_text !~ '^[0-9]+$' THEN
            detail := format('invalid step "%s"', step_text);
        ELSIF step NOT BETWEEN 1 AND p_max THEN
            detail := format('step %s is out of range 1-%s', step_text, p_max);
        ELSE
            IF base = '*' THEN
                vals := vals || ARRAY(SELECT generate_series(p_min, p_max, step));
            ELSIF base ~ '^[^-]+-[^-]+$' THEN
                SELECT * INTO lo
                FROM runner_cron_value(split_part(base, '-', 1), p_min, p_max, p_names, p_name_base);
                SELECT * INTO hi
                FROM runner_cron_value(split_part(base, '-', 2), p_min, p_max, p_names, p_name_base);
                detail := coalesce(lo.problem, hi.problem);
                IF detail IS NULL AND lo.value > hi.value THEN
                    detail := format('range %s is backwards', base);
                END IF;
                IF detail IS NULL THEN
                    vals := vals || ARRAY(SELECT generate_series(lo.value, hi.value, step));
                END IF;
            ELSIF base ~ '^[^-]+$' AND base <> '*' THEN
                IF step_text IS NOT NULL THEN
                    detail := format('a step needs "*" or a range before it, got "%s"', item);
                ELSE
                    SELECT * INTO lo
                    FROM runner_cron_value(base, p_min, p_max, p_names, p_name_base);
                    detail := lo.problem;
                    vals := vals || lo.value;
                END IF;
            ELSE
                detail := format('invalid item "%s"', item);
            END IF;
        END IF;
        IF detail IS NOT NULL THEN
            vals := NULL;
            problem := format('%s field "%s": %s', p_field, p_text, detail);
            RETURN;
        END IF;
    END LOOP;
END;
$$;

-- NULL when expr is a valid schedule (or NULL: no schedule), else what is wrong.
CREATE FUNCTION runner_cron_problem(expr text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    trimmed text;
    parts text[];
    month_names constant text[] := ARRAY['JAN', 'FEB', 'MAR', 'APR', 'MAY', 'JUN', 'JUL',
                                         'AUG', 'SEP', 'OCT', 'NOV', 'DEC'];
    day_names constant text[] := ARRAY['SUN', 'MON', 'TUE', 'WED', 'THU', 'FRI', 'SAT'];
    -- February counts 29 days: a 29th of February does happen
    month_days constant integer[] := ARRAY[31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    f record;
    days integer[];
    months integer[];
BEGIN
    IF expr IS NULL THEN
        RETURN NULL;
    END IF;
    trimmed := btrim(expr, E' \t');
    IF trimmed = '' THEN
        RETURN 'the expression is empty (set schedule_cron to NULL for no schedule)';
    END IF;
    parts := regexp_split_to_array(trimmed, E'[ \t]+');
    IF cardinality(parts) = 5 THEN
        parts := array_prepend('0', parts);
    ELSIF cardinality(parts) <> 6 THEN
        RETURN format('expected 5 fields (minute hour day-of-month month day-of-week) '
                      'or 6 with seconds first, got %s', cardinality(parts));
    END IF;
    SELECT * INTO f FROM runner_cron_field(parts[1], 'second', 0, 59, NULL, 0);
    IF f.problem IS NOT NULL THEN RETURN f.problem; END IF;
    SELECT * INTO f FROM runner_cron_field(parts[2], 'minute', 0, 59, NULL, 0);
    IF f.problem IS NOT NULL THEN RETURN f.problem; END IF;
    SELECT * INTO f FROM runner_cron_field(parts[3], 'hour', 0, 23, NULL, 0);
    IF f.problem IS NOT NULL THEN RETURN f.problem; END IF;
    SELECT * INTO f FROM runner_cron_field(parts[4], 'day-of-month', 1, 31, NULL, 0);
    IF f.problem IS NOT NULL THEN RETURN f.problem; END IF;
    days := f.vals;
    SELECT * INTO f FROM runner_cron_field(parts[5], 'month', 1, 12, month_names, 1);
    IF f.problem IS NOT NULL THEN RETURN f.problem; END IF;
    months := f.vals;
    SELECT * INTO f FROM runner_cron_field(parts[6], 'day-of-week', 0, 7, day_names, 0);
    IF f.problem IS NOT NULL THEN RETURN f.problem; END IF;
    -- Days are ANDed with the weekday unless both fields are restricted (then ORed, and
    -- the weekday alone fires). When ANDed, some selected day must exist in some
    -- selected month; any such date falls on every weekday over the years.
    IF NOT (left(parts[4], 1) <> '*' AND left(parts[6], 1) <> '*')
       AND NOT EXISTS (SELECT 1 FROM unnest(days) d, unnest(months) m
                       WHERE d <= month_days[m]) THEN
        RETURN format('day-of-month "%s" never occurs in month "%s"', parts[4], parts[5]);
    END IF;
    RETURN NULL;
END;
$$;

-- When the current schedule (expression, time zone, active flag) took effect: a fire
-- before it is not "missed" and never caught up.
ALTER TABLE ai_agents ADD COLUMN schedule_changed_at timestamptz NOT NULL DEFAULT now();

CREATE FUNCTION runner_ai_agents_check_schedule() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    problem text;
BEGIN
    IF TG_OP = 'INSERT' OR NEW.schedule_cron IS DISTINCT FROM OLD.schedule_cron THEN
        problem := runner_cron_problem(NEW.schedule_cron);
        IF problem IS NOT NULL THEN
            RAISE EXCEPTION 'invalid schedule_cron "%" for agent "%": %',
                NEW.schedule_cron, NEW.name, problem
                USING ERRCODE = 'check_violation',
                      HINT = 'use 5 fields (minute hour day-of-month month day-of-week) '
                             'or 6 with seconds first, e.g. ''0 9 * * MON-FRI''';
        END IF;
    END IF;
    IF TG_OP = 'INSERT' OR NEW.schedule_timezone IS DISTINCT FROM OLD.schedule_timezone THEN
        IF NEW.schedule_timezone IS NULL OR NOT EXISTS (
                SELECT 1 FROM pg_timezone_names WHERE name = NEW.schedule_timezone) THEN
            RAISE EXCEPTION 'invalid schedule_timezone for agent "%": unknown time zone "%"',
                NEW.name, NEW.schedule_timezone
                USING ERRCODE = 'check_violation',
                      HINT = 'use a name from pg_timezone_names, e.g. ''Europe/London''';
        END IF;
    END IF;
    IF TG_OP = 'INSERT' THEN
        NEW.schedule_changed_at := now();
    ELSIF (NEW.schedule_cron, NEW.schedule_timezone, NEW.is_active)
          IS DISTINCT FROM (OLD.schedule_cron, OLD.schedule_timezone, OLD.is_active) THEN
        NEW.schedule_changed_at := now();
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER ai_agents_check_schedule BEFORE INSERT OR UPDATE ON ai_agents
    FOR EACH ROW EXECUTE FUNCTION runner_ai_agents_check_schedule();

-- Every daemon's scheduler LISTENs here and reloads; NOTIFY is delivered on commit.
CREATE FUNCTION runner_ai_agents_notify_schedule() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.schedule_cron IS NOT NULL THEN
            PERFORM pg_notify('agent_runner_schedules', OLD.id::text);
        END IF;
    ELSIF TG_OP = 'INSERT' THEN
        IF NEW.schedule_cron IS NOT NULL THEN
            PERFORM pg_notify('agent_runner_schedules', NEW.id::text);
        END IF;
    ELSIF (NEW.schedule_cron, NEW.schedule_timezone, NEW.is_active)
          IS DISTINCT FROM (OLD.schedule_cron, OLD.schedule_timezone, OLD.is_active) THEN
        PERFORM pg_notify('agent_runner_schedules', NEW.id::text);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER ai_agents_notify_schedule AFTER INSERT OR UPDATE OR DELETE ON ai_agents
    FOR EACH ROW EXECUTE FUNCTION runner_ai_agents_notify_schedule();

-- =====================================================================================
-- Cron fires
-- =====================================================================================

-- One row per (agent, fire time) that produced a task. The primary key is what makes
-- a fire happen once across daemons: each daemon tries the insert, one wins.
CREATE TABLE cron_fires (
    agent_id uuid NOT NULL REFERENCES ai_agents (id) ON DELETE CASCADE,
    fire_time timestamptz NOT NULL,
    task_id uuid NULL REFERENCES agent_tasks (id) ON DELETE SET NULL,
    daemon_id uuid NULL,               -- no foreign key: daemon rows come and go
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_id, fire_time)
);

-- The payload an agent is run with when nobody passes one (cron, workflows): its
-- configuration's "payload" object, or {}.
CREATE FUNCTION runner_agent_payload(p_configuration jsonb) RETURNS jsonb
    LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN jsonb_typeof(p_configuration -> 'payload') = 'object'
                THEN p_configuration -> 'payload' ELSE '{}'::jsonb END
$$;

-- Claims one fire and enqueues its task, in the caller's transaction.
--   outcome 'enqueued'  this call won the fire; task_id is the new task
--           'duplicate' another daemon (or an earlier call) already fired it
--           'stale'     the agent's schedule changed or it was disabled since the
--                       caller loaded it: the fire belongs to a schedule that is gone
--           'gone'      the agent no longer exists
CREATE FUNCTION runner_cron_fire(
    p_agent_id uuid, p_fire_time timestamptz, p_schedule_cron text,
    p_schedule_timezone text, p_daemon_id uuid DEFAULT NULL)
    RETURNS TABLE (outcome text, task_id uuid, agent_type text)
    LANGUAGE plpgsql AS $$
DECLARE
    agent ai_agents%ROWTYPE;
    new_task uuid;
BEGIN
    -- FOR SHARE: nobody disables or reschedules the agent between the check and the
    -- insert (the insert would otherwise fail on a disabled agent).
    SELECT * INTO agent FROM ai_agents WHERE id = p_agent_id FOR SHARE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'gone'::text, NULL::uuid, NULL::text;
        RETURN;
    END IF;
    IF NOT agent.is_active OR agent.schedule_cron IS DISTINCT FROM p_schedule_cron
       OR agent.schedule_timezone IS DISTINCT FROM p_schedule_timezone THEN
        RETURN QUERY SELECT 'stale'::text, NULL::uuid, agent.agent_type;
        RETURN;
    END IF;
    INSERT INTO cron_fires (agent_id, fire_time, daemon_id)
    VALUES (p_agent_id, p_fire_time, p_daemon_id)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'duplicate'::text, NULL::uuid, agent.agent_type;
        RETURN;
    END IF;
    INSERT INTO agent_tasks (agent_id, payload, trigger)
    VALUES (agent.id, runner_agent_payload(agent.configuration), 'scheduled')
    RETURNING id INTO new_task;
    UPDATE cron_fires f SET task_id = new_task
    WHERE f.agent_id = p_agent_id AND f.fire_time = p_fire_time;
    RETURN QUERY SELECT 'enqueued'::text, new_task, agent.agent_type;
END;
$$;

-- =====================================================================================
-- Assignment dependencies: no unknown agents, no cycles
-- =====================================================================================
--
-- Checked after each INSERT/UPDATE statement (so one multi-row INSERT may list an
-- assignment before the one it depends on). The stream row is locked first: two
-- concurrent edits could otherwise each add half of a cycle unseen by the other.

CREATE FUNCTION runner_assignments_check_dependencies() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    stream_name text;
    missing uuid;
    missing_name text;
    frontier uuid[] := ARRAY[NEW.agent_id];
    next_frontier uuid[];
    visited uuid[] := '{}';
    -- how the search reached each agent: agent -> the agent that depends on it
    reached_from jsonb := '{}';
    edge record;
    node uuid;
    cycle uuid[];
    cycle_text text;
BEGIN
    SELECT s.name INTO stream_name FROM streams s WHERE s.id = NEW.stream_id FOR NO KEY UPDATE;

    IF array_position(NEW.depends_on_agent_ids, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'depends_on_agent_ids of agent "%" in stream "%" contains NULL',
            (SELECT name FROM ai_agents WHERE id = NEW.agent_id), stream_name
            USING ERRCODE = 'check_violation';
    END IF;

    SELECT d INTO missing
    FROM unnest(NEW.depends_on_agent_ids) d
    WHERE NOT EXISTS (SELECT 1 FROM stream_agent_assignments sa
                      WHERE sa.stream_id = NEW.stream_id AND sa.agent_id = d)
    LIMIT 1;
    IF FOUND THEN
        SELECT name INTO missing_name FROM ai_agents WHERE id = missing;
        RAISE EXCEPTION 'agent "%" in stream "%" depends on %, which is not assigned to the stream',
            (SELECT name FROM ai_agents WHERE id = NEW.agent_id), stream_name,
            CASE WHEN missing_name IS NULL THEN format('unknown agent %s', missing)
                 ELSE format('agent "%s"', missing_name) END
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'assign the agent to the stream first (or in the same INSERT)';
    END IF;

    -- Breadth-first search along "depends on" edges from the written agent; reaching
    -- it again is a cycle. Linear in the stream's assignments.
    LOOP
        next_frontier := '{}';
        FOR edge IN
            SELECT sa.agent_id AS src, d AS dst
            FROM stream_agent_assignments sa, unnest(sa.depends_on_agent_ids) d
            WHERE sa.stream_id = NEW.stream_id AND sa.agent_id = ANY (frontier)
            ORDER BY sa.execution_order, sa.agent_id, d
        LOOP
            IF edge.dst = NEW.agent_id THEN
                cycle := ARRAY[edge.src];
                node := edge.src;
                WHILE node <> NEW.agent_id LOOP
                    node := (reached_from ->> node::text)::uuid;
                    cycle := node || cycle;
                END LOOP;
                cycle := cycle || NEW.agent_id;
                SELECT string_agg(coalesce(a.name, u.id::text), ' -> ' ORDER BY u.ord)
                INTO cycle_text
                FROM unnest(cycle) WITH ORDINALITY u(id, ord)
                LEFT JOIN ai_agents a ON a.id = u.id;
                RAISE EXCEPTION 'dependency cycle in stream "%": % (each agent depends on the next)',
                    stream_name, cycle_text
                    USING ERRCODE = 'check_violation';
            END IF;
            IF NOT edge.dst = ANY (visited) THEN
                visited := visited || edge.dst;
                reached_from := reached_from || jsonb_build_object(edge.dst::text, edge.src::text);
                next_frontier := next_frontier || edge.dst;
            END IF;
        END LOOP;
        EXIT WHEN cardinality(next_frontier) = 0;
        frontier := next_frontier;
    END LOOP;
    RETURN NULL;
END;
$$;

-- total_executions / last_executed_at bumps do not name these columns, so they skip
-- the check (and the stream lock).
CREATE TRIGGER stream_agent_assignments_check_dependencies
    AFTER INSERT OR UPDATE OF depends_on_agent_ids, agent_id, stream_id
    ON stream_agent_assignments
    FOR EACH ROW EXECUTE FUNCTION runner_assignments_check_dependencies();

-- Removing (or moving) an assignment others depend on would leave a dangling
-- dependency. Checked at commit, so deleting a whole stream or replacing an
-- assignment within one transaction is fine.
CREATE FUNCTION runner_assignments_check_removal() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    dependent_name text;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.stream_id = OLD.stream_id AND NEW.agent_id = OLD.agent_id THEN
        RETURN NULL;
    END IF;
    IF EXISTS (SELECT 1 FROM stream_agent_assignments
               WHERE stream_id = OLD.stream_id AND agent_id = OLD.agent_id) THEN
        RETURN NULL;
    END IF;
    SELECT a.name INTO dependent_name
    FROM stream_agent_assignments sa JOIN ai_agents a ON a.id = sa.agent_id
    WHERE sa.stream_id = OLD.stream_id AND OLD.agent_id = ANY (sa.depends_on_agent_ids)
    ORDER BY a.name
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'cannot remove agent % from stream "%": agent "%" depends on it',
            coalesce((SELECT format('"%s"', name) FROM ai_agents WHERE id = OLD.agent_id),
                     OLD.agent_id::text),
            (SELECT name FROM streams WHERE id = OLD.stream_id), dependent_name
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'remove the dependency from depends_on_agent_ids first';
    END IF;
    RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER stream_agent_assignments_check_removal
    AFTER DELETE OR UPDATE OF agent_id, stream_id ON stream_agent_assignments
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION runner_assignments_check_removal();

-- =====================================================================================
-- Workflow runs
-- =====================================================================================

CREATE TABLE workflow_runs (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL DEFAULT runner_default_org_id() REFERENCES organizations (id),
    stream_id uuid NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    trigger text NOT NULL DEFAULT 'manual' CHECK (trigger IN ('manual', 'scheduled')),
    -- running: steps are pending, processing or waiting for their parents
    -- completed: every enqueued task completed and nothing is left to enqueue
    -- failed: a task failed for good or was cancelled (its dependents do not start;
    --         other branches still finish: completed_at stays NULL until they do)
    status text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'completed', 'failed')),
    priority integer NOT NULL DEFAULT 5 CHECK (priority BETWEEN 1 AND 10),
    -- the stream's goal when the run was triggered: every step works to the same goal
    goal_context jsonb NOT NULL DEFAULT '{}',
    error_message text NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz NULL      -- nothing left running or waiting
);

CREATE INDEX workflow_runs_stream_idx ON workflow_runs (stream_id, created_at DESC);
CREATE INDEX workflow_runs_running_idx ON workflow_runs (created_at) WHERE status = 'running';

-- The run's plan: one row per assignment that was active when the run was triggered.
CREATE TABLE workflow_run_steps (
    workflow_run_id uuid NOT NULL REFERENCES workflow_runs (id) ON DELETE CASCADE,
    agent_id uuid NOT NULL REFERENCES ai_agents (id) ON DELETE CASCADE,
    depends_on uuid[] NOT NULL DEFAULT '{}',
    execution_order integer NOT NULL,
    auto_execute boolean NOT NULL,
    depth integer NULL,                -- longest chain of parents above it; roots are 0
    -- waiting: parents not all completed yet; enqueued: task_id holds the live state;
    -- not_started: will not run in this run, reason says why
    status text NOT NULL DEFAULT 'waiting'
        CHECK (status IN ('waiting', 'enqueued', 'not_started')),
    task_id uuid NULL REFERENCES agent_tasks (id) ON DELETE SET NULL,
    -- the failed or cancelled task that keeps this step from starting; a retry of it
    -- that completes lets the step start after all
    blocked_by_task_id uuid NULL,
    reason text NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_run_id, agent_id)
);

CREATE INDEX workflow_run_steps_task_idx ON workflow_run_steps (task_id) WHERE task_id IS NOT NULL;

-- NOT VALID: rows written before this migration are not checked (none should name a
-- run), new ones are.
ALTER TABLE agent_tasks ADD CONSTRAINT agent_tasks_workflow_run_fk
    FOREIGN KEY (workflow_run_id) REFERENCES workflow_runs (id) ON DELETE SET NULL NOT VALID;

-- The backstop of exactly-once: one task per agent per run, whatever the interleaving.
-- A retried task is the same row, so retries do not collide with it.
CREATE UNIQUE INDEX agent_tasks_one_per_workflow_step
    ON agent_tasks (workflow_run_id, agent_id) WHERE workflow_run_id IS NOT NULL;

-- What a workflow step is run with: exactly the input each agent type takes
-- (CONTRACT.md), because every agent refuses unknown keys. opportunity_bot and
-- scoring_agent get {stream_id, goal_context}, enrichment_agent {stream_id}; the
-- others (noop, llm_agent) have no stream input and get only their configured payload.
-- Parents' outputs reach every child as ctx.parent_outputs.
CREATE FUNCTION runner_workflow_payload(
    p_agent_type text, p_configuration jsonb, p_stream_id uuid, p_goal_context jsonb)
    RETURNS jsonb
    LANGUAGE sql IMMUTABLE AS $$
    SELECT runner_agent_payload(p_configuration)
           || CASE WHEN p_agent_type IN ('opportunity_bot', 'scoring_agent')
                   THEN jsonb_build_object('stream_id', p_stream_id, 'goal_context', p_goal_context)
                   WHEN p_agent_type = 'enrichment_agent'
                   THEN jsonb_build_object('stream_id', p_stream_id)
                   ELSE '{}'::jsonb END
$$;

-- Brings a run up to date with its tasks' states; idempotent, so every status change
-- of a run's task simply calls it. Everything runs under the run's row lock:
--
--   1. steps blocked by a failed task that has since been retried wait again;
--   2. waiting steps below a failed, cancelled or not-started parent are marked
--      not_started, with the reason (to a fixpoint: the whole subtree);
--   3. waiting steps whose parents all completed are enqueued, in execution_order;
--   4. the run's status follows.
--
-- Why the lock makes fan-in exactly-once: when B and C (both parents of D) complete
-- in two transactions at once, the second blocks here until the first commits. Under
-- READ COMMITTED each statement of this (volatile) function takes a new snapshot, so
-- after the wait the second sees the first's completion and enqueues D; the first saw
-- the other parent unfinished and did not. The UPDATE (rather than SELECT FOR UPDATE)
-- makes a REPEATABLE READ caller fail with a serialization error instead of reading
-- a stale snapshot. agent_tasks_one_per_workflow_step backs it all up.
CREATE FUNCTION runner_workflow_advance(p_run_id uuid) RETURNS text
    LANGUAGE plpgsql AS $$
DECLARE
    run workflow_runs%ROWTYPE;
    step workflow_run_steps%ROWTYPE;
    agent ai_agents%ROWTYPE;
    parents uuid[];
    new_task uuid;
    started uuid[] := '{}';
    changed integer;
    n_failed integer;
    n_active integer;
    n_waiting integer;
    new_status text;
    first_failure text;
BEGIN
    UPDATE workflow_runs SET updated_at = clock_timestamp()
    WHERE id = p_run_id
    RETURNING * INTO run;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;

    -- 1. a blocking task that is no longer failed or cancelled (retried) blocks no more
    UPDATE workflow_run_steps s
    SET status = 'waiting', reason = NULL, blocked_by_task_id = NULL, updated_at = now()
    WHERE s.workflow_run_id = p_run_id AND s.status = 'not_started'
      AND s.blocked_by_task_id IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM agent_tasks t
                      WHERE t.id = s.blocked_by_task_id AND t.status IN ('failed', 'cancelled'));

    FOR phase IN 1..2 LOOP
        -- 2. block the subtrees below failures (and below steps that will not start)
        LOOP
            WITH blocker AS (
                SELECT DISTINCT ON (s.agent_id)
                       s.agent_id,
                       CASE WHEN p.status = 'enqueued' THEN p.task_id
                            ELSE p.blocked_by_task_id END AS cause_task,
                       CASE WHEN p.status = 'enqueued' THEN
                                format('not started: parent task %s (%s) %s: %s', p.task_id, pa.name,
                                       CASE t.status WHEN 'failed' THEN 'failed' ELSE 'was cancelled' END,
                                       coalesce(t.error_message, 'no error message'))
                            WHEN ct.id IS NOT NULL THEN
                                format('not started: ancestor task %s (%s) %s: %s', ct.id, ca.name,
                                       CASE ct.status WHEN 'failed' THEN 'failed' ELSE 'was cancelled' END,
                                       coalesce(ct.error_message, 'no error message'))
                            ELSE format('not started: parent step %s was not started', pa.name)
                       END AS reason
                FROM workflow_run_steps s
                JOIN workflow_run_steps p
                  ON p.workflow_run_id = s.workflow_run_id AND p.agent_id = ANY (s.depends_on)
                JOIN ai_agents pa ON pa.id = p.agent_id
                LEFT JOIN agent_tasks t ON t.id = p.task_id
                LEFT JOIN agent_tasks ct ON ct.id = p.blocked_by_task_id
                LEFT JOIN ai_agents ca ON ca.id = ct.agent_id
                WHERE s.workflow_run_id = p_run_id AND s.status = 'waiting'
                  AND (p.status = 'not_started'
                       OR (p.status = 'enqueued' AND t.status IN ('failed', 'cancelled')))
                ORDER BY s.agent_id, (p.status = 'enqueued') DESC, p.execution_order, p.agent_id
            )
            UPDATE workflow_run_steps s
            SET status = 'not_started', blocked_by_task_id = b.cause_task, reason = b.reason,
                updated_at = now()
            FROM blocker b
            WHERE s.workflow_run_id = p_run_id AND s.agent_id = b.agent_id;
            GET DIAGNOSTICS changed = ROW_COUNT;
            EXIT WHEN changed = 0;
        END LOOP;

        EXIT WHEN phase = 2;

        -- 3. enqueue the steps whose parents have all completed
        FOR step IN
            SELECT s.* FROM workflow_run_steps s
            WHERE s.workflow_run_id = p_run_id AND s.status = 'waiting'
              AND NOT EXISTS (
                  SELECT 1 FROM unnest(s.depends_on) dep(agent_id)
                  WHERE NOT EXISTS (
                      SELECT 1 FROM workflow_run_steps p JOIN agent_tasks t ON t.id = p.task_id
                      WHERE p.workflow_run_id = p_run_id AND p.agent_id = dep.agent_id
                        AND t.status = 'completed'))
            ORDER BY s.execution_order, s.agent_id
        LOOP
            -- FOR SHARE: the agent cannot be disabled between this check and the insert
            SELECT * INTO agent FROM ai_agents WHERE id = step.agent_id FOR SHARE;
            IF NOT agent.is_active THEN
                UPDATE workflow_run_steps
                SET status = 'not_started', updated_at = now(),
                    reason = format('not started: agent "%s" is disabled', agent.name)
                WHERE workflow_run_id = p_run_id AND agent_id = step.agent_id;
                CONTINUE;
            END IF;
            SELECT array_agg(p.task_id ORDER BY p.execution_order, p.agent_id) INTO parents
            FROM workflow_run_steps p
            WHERE p.workflow_run_id = p_run_id AND p.agent_id = ANY (step.depends_on);
            INSERT INTO agent_tasks (agent_id, payload, priority, workflow_run_id, trigger,
                                     parent_task_ids)
            VALUES (step.agent_id,
                    runner_workflow_payload(agent.agent_type, agent.configuration,
                                            run.stream_id, run.goal_context),
                    run.priority, run.id,
                    CASE WHEN cardinality(step.depends_on) = 0 THEN run.trigger
                         ELSE 'dependent' END,
                    coalesce(parents, '{}'))
            RETURNING id INTO new_task;
            UPDATE workflow_run_steps
            SET status = 'enqueued', task_id = new_task, updated_at = now()
            WHERE workflow_run_id = p_run_id AND agent_id = step.agent_id;
            started := started || step.agent_id;
        END LOOP;
    END LOOP;

    IF cardinality(started) > 0 THEN
        -- Lock in id order first: two runs of one stream bumping the same assignments
        -- in different orders would deadlock.
        PERFORM 1 FROM stream_agent_assignments
        WHERE stream_id = run.stream_id AND agent_id = ANY (started)
        ORDER BY id FOR UPDATE;
        UPDATE stream_agent_assignments
        SET total_executions = total_executions + 1, last_executed_at = now()
        WHERE stream_id = run.stream_id AND agent_id = ANY (started);
    END IF;

    -- 4. status
    SELECT count(*) FILTER (WHERE t.status IN ('failed', 'cancelled')),
           count(*) FILTER (WHERE t.status IN ('pending', 'processing')),
           count(*) FILTER (WHERE s.status = 'waiting')
    INTO n_failed, n_active, n_waiting
    FROM workflow_run_steps s LEFT JOIN agent_tasks t ON t.id = s.task_id
    WHERE s.workflow_run_id = p_run_id;

    IF n_waiting > 0 AND n_active = 0 THEN
        -- Nothing is running that could ever release these steps (a legacy dependency
        -- cycle, or a parent task deleted): say so rather than hang forever.
        UPDATE workflow_run_steps
        SET status = 'not_started', updated_at = now(),
            reason = 'not started: its dependencies can never complete'
        WHERE workflow_run_id = p_run_id AND status = 'waiting';
        n_waiting := 0;
        first_failure := 'some steps can never start: their dependencies can never complete';
    END IF;

    IF n_failed > 0 THEN
        SELECT format('task %s (%s) %s: %s', t.id, a.name,
                      CASE t.status WHEN 'failed' THEN 'failed' ELSE 'was cancelled' END,
                      coalesce(t.error_message, 'no error message'))
        INTO first_failure
        FROM workflow_run_steps s
        JOIN agent_tasks t ON t.id = s.task_id
        JOIN ai_agents a ON a.id = t.agent_id
        WHERE s.workflow_run_id = p_run_id AND t.status IN ('failed', 'cancelled')
        ORDER BY t.completed_at NULLS LAST, t.id
        LIMIT 1;
    END IF;
    new_status := CASE WHEN first_failure IS NOT NULL THEN 'failed'
                       WHEN n_active + n_waiting > 0 THEN 'running'
                       ELSE 'completed' END;

    UPDATE workflow_runs
    SET status = new_status,
        error_message = first_failure,
        completed_at = CASE WHEN n_active + n_waiting = 0
                            THEN coalesce(run.completed_at, now()) END
    WHERE id = p_run_id;
    IF new_status IS DISTINCT FROM run.status THEN
        PERFORM pg_notify('agent_runner_workflows',
                          json_build_object('workflow_run_id', p_run_id, 'status', new_status)::text);
    END IF;
    RETURN new_status;
END;
$$;

-- Runs in the transaction that changes the task's status (the executor's fenced
-- finish, the rescuer, cancel_agent_task, retry_agent_task, or plain SQL). Claims
-- (pending -> processing) and retry backoffs (processing -> pending) change nothing
-- for the run and do not take its lock.
CREATE FUNCTION runner_agent_tasks_advance_workflow() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM runner_workflow_advance(NEW.workflow_run_id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER agent_tasks_advance_workflow AFTER UPDATE OF status ON agent_tasks
    FOR EACH ROW
    WHEN (NEW.workflow_run_id IS NOT NULL AND NEW.status IS DISTINCT FROM OLD.status
          AND (NEW.status IN ('completed', 'failed', 'cancelled')
               OR OLD.status IN ('failed', 'cancelled')))
    EXECUTE FUNCTION runner_agent_tasks_advance_workflow();

CREATE FUNCTION runner_workflow_trigger(p_stream uuid, p_trigger text, p_priority integer)
    RETURNS uuid
    LANGUAGE plpgsql AS $$
DECLARE
    s streams%ROWTYPE;
    run_id uuid;
    changed integer;
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

    INSERT INTO workflow_run_steps (workflow_run_id, agent_id, depends_on, execution_order,
                                    auto_execute)
    SELECT run_id, sa.agent_id, sa.depends_on_agent_ids, sa.execution_order, sa.auto_execute
    FROM stream_agent_assignments sa
    WHERE sa.stream_id = s.id AND sa.is_active;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'stream "%" has no active agent assignments', s.name
            USING ERRCODE = 'no_data_found';
    END IF;

    -- Steps that will not start by configuration. auto_execute means "start when the
    -- parents complete"; a root is started by this trigger itself, so it ignores it.
    UPDATE workflow_run_steps st
    SET status = 'not_started',
        reason = format('not started: depends on %s, which has no active assignment in the stream',
                        coalesce((SELECT format('agent "%s"', a.name) FROM ai_agents a
                                  WHERE a.id = missing.agent_id), missing.agent_id::text))
    FROM (SELECT DISTINCT ON (x.agent_id) x.agent_id AS step_agent, d AS agent_id
          FROM workflow_run_steps x, unnest(x.depends_on) d
          WHERE x.workflow_run_id = run_id
            AND NOT EXISTS (SELECT 1 FROM workflow_run_steps y
                            WHERE y.workflow_run_id = run_id AND y.agent_id = d)
          ORDER BY x.agent_id, d) missing
    WHERE st.workflow_run_id = run_id AND st.agent_id = missing.step_agent;

    UPDATE workflow_run_steps
    SET status = 'not_started', reason = 'not started: auto_execute is off for this assignment'
    WHERE workflow_run_id = run_id AND status = 'waiting'
      AND cardinality(depends_on) > 0 AND NOT auto_execute;

    -- depth = longest chain of parents, level by level (a recursive CTE would walk
    -- every path, exponential in a dense graph).
    UPDATE workflow_run_steps SET depth = 0
    WHERE workflow_run_id = run_id AND cardinality(depends_on) = 0;
    LOOP
        UPDATE workflow_run_steps st
        SET depth = 1 + (SELECT max(p.depth) FROM workflow_run_steps p
                         WHERE p.workflow_run_id = run_id AND p.agent_id = ANY (st.depends_on))
        WHERE st.workflow_run_id = run_id AND st.depth IS NULL
          AND NOT EXISTS (SELECT 1 FROM unnest(st.depends_on) d
                          JOIN workflow_run_steps p
                            ON p.workflow_run_id = run_id AND p.agent_id = d
                          WHERE p.depth IS NULL)
          AND EXISTS (SELECT 1 FROM workflow_run_steps p
                      WHERE p.workflow_run_id = run_id AND p.agent_id = ANY (st.depends_on));
        GET DIAGNOSTICS changed = ROW_COUNT;
        EXIT WHEN changed = 0;
    END LOOP;

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

-- Public entry point: one run of the stream's workflow; returns the run's id.
CREATE FUNCTION trigger_stream_workflow(
    stream uuid, trigger text DEFAULT 'manual', priority integer DEFAULT 5)
    RETURNS uuid
    LANGUAGE sql AS $$
    SELECT runner_workflow_trigger(stream, trigger, priority)
$$;

-- One row per step of every run: what ran, what did not and why, and the shape.
CREATE VIEW workflow_run_tree AS
SELECT r.id AS workflow_run_id,
       r.stream_id,
       r.status AS run_status,
       s.depth,
       s.execution_order,
       s.agent_id,
       a.name AS agent_name,
       s.task_id,
       -- waiting | not_started, or the task's own status once enqueued
       CASE WHEN s.status = 'enqueued' THEN coalesce(t.status, 'deleted') ELSE s.status END
           AS status,
       t.trigger,
       ARRAY(SELECT p.task_id FROM workflow_run_steps p
             WHERE p.workflow_run_id = s.workflow_run_id AND p.agent_id = ANY (s.depends_on)
               AND p.task_id IS NOT NULL
             ORDER BY p.execution_order, p.agent_id) AS parent_task_ids,
       ARRAY(SELECT pa.name FROM ai_agents pa WHERE pa.id = ANY (s.depends_on)
             ORDER BY pa.name) AS parent_agents,
       coalesce(s.reason, t.error_message) AS note,
       t.created_at AS enqueued_at,
       t.started_at,
       t.completed_at
FROM workflow_runs r
JOIN workflow_run_steps s ON s.workflow_run_id = r.id
JOIN ai_agents a ON a.id = s.agent_id
LEFT JOIN agent_tasks t ON t.id = s.task_id;
