-- agent-runner core schema: organizations, agents, streams, the task queue as users
-- see it, the execution ledger, logs, daemons and the admin functions.
--
-- Delivery is procrastinate's: every attempt of a task is one procrastinate job
-- (task name 'agent_runner.attempt', queue 'agent_runner'). agent_tasks.job_id points
-- at the job of the current attempt; agent_tasks.current_execution_id at the attempt
-- that owns the task while it is 'processing'. A finishing attempt writes only if it
-- still owns the task (fencing, see runner/store.py).
--
-- Only built-ins are used (gen_random_uuid() is core since PostgreSQL 13), so the
-- schema installs on servers without contrib extensions, like the embedded one.

-- Organizations -------------------------------------------------------------------

CREATE TABLE organizations (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The default organization has a fixed id so that every org_id column can default to
-- it; single-tenant users never name one.
INSERT INTO organizations (id, name)
VALUES ('00000000-0000-0000-0000-000000000001', 'default');

CREATE FUNCTION runner_default_org_id() RETURNS uuid
    LANGUAGE sql IMMUTABLE AS $$ SELECT '00000000-0000-0000-0000-000000000001'::uuid $$;

-- Agents --------------------------------------------------------------------------

CREATE TABLE ai_agents (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL DEFAULT runner_default_org_id() REFERENCES organizations (id),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    agent_type text NOT NULL CHECK (agent_type IN (
        'opportunity_bot', 'enrichment_agent', 'scoring_agent', 'llm_agent', 'noop')),
    description text NOT NULL DEFAULT '',
    configuration jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(configuration) = 'object'),
    schedule_cron text NULL,
    schedule_timezone text NOT NULL DEFAULT 'UTC',
    is_active boolean NOT NULL DEFAULT true,
    -- seed 002: an agent is defined by its row
    model text NOT NULL DEFAULT 'claude-sonnet-4-6',
    instructions_prompt text NOT NULL DEFAULT '',
    tool_names text[] NOT NULL DEFAULT '{}',
    max_agent_steps integer NOT NULL DEFAULT 10 CHECK (max_agent_steps BETWEEN 1 AND 1000),
    max_retries integer NOT NULL DEFAULT 3 CHECK (max_retries BETWEEN 0 AND 100),
    timeout_seconds integer NOT NULL DEFAULT 300 CHECK (timeout_seconds BETWEEN 1 AND 86400),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, name)
);

-- Streams (seed 004) --------------------------------------------------------------

CREATE TABLE streams (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL DEFAULT runner_default_org_id() REFERENCES organizations (id),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description text NOT NULL DEFAULT '',
    goal_criteria jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(goal_criteria) = 'object'),
    target_metrics jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(target_metrics) = 'object'),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE stream_agent_assignments (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL DEFAULT runner_default_org_id() REFERENCES organizations (id),
    stream_id uuid NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    agent_id uuid NOT NULL REFERENCES ai_agents (id) ON DELETE CASCADE,
    assignment_role text NOT NULL DEFAULT 'primary',
    execution_order integer NOT NULL DEFAULT 1,
    is_active boolean NOT NULL DEFAULT true,
    auto_execute boolean NOT NULL DEFAULT true,
    execution_frequency text NULL,
    depends_on_agent_ids uuid[] NOT NULL DEFAULT '{}',
    total_executions integer NOT NULL DEFAULT 0,
    last_executed_at timestamptz NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream_id, agent_id)
);

-- The queue as users see it -------------------------------------------------------

CREATE TABLE agent_tasks (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    agent_id uuid NOT NULL REFERENCES ai_agents (id),
    org_id uuid NOT NULL DEFAULT runner_default_org_id() REFERENCES organizations (id),
    task_type text NOT NULL,           -- filled from the agent's agent_type when omitted
    priority integer NOT NULL DEFAULT 5,
    payload jsonb NOT NULL DEFAULT '{}',
    status text NOT NULL DEFAULT 'pending',
    retry_count integer NOT NULL DEFAULT 0 CHECK (retry_count >= 0),
    max_retries integer NOT NULL,      -- filled from the agent's max_retries when omitted
    scheduled_for timestamptz NOT NULL DEFAULT now(),
    error_message text NULL,
    output jsonb NULL,                 -- the output of the attempt that completed it
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz NULL,       -- first attempt
    completed_at timestamptz NULL,     -- terminal state reached
    -- delivery and fencing
    job_id bigint NULL,                -- procrastinate job of the current attempt
    current_execution_id uuid NULL,    -- the attempt that owns the task while processing
    cancel_requested boolean NOT NULL DEFAULT false,
    -- workflow identity (dependent agents, cron)
    workflow_run_id uuid NULL,
    trigger text NOT NULL DEFAULT 'manual',
    parent_task_ids uuid[] NOT NULL DEFAULT '{}',
    CONSTRAINT agent_tasks_priority_range CHECK (priority BETWEEN 1 AND 10),
    CONSTRAINT agent_tasks_status_vocabulary CHECK (status IN (
        'pending', 'processing', 'completed', 'failed', 'cancelled')),
    CONSTRAINT agent_tasks_payload_object CHECK (jsonb_typeof(payload) = 'object'),
    CONSTRAINT agent_tasks_payload_size CHECK (octet_length(payload::text) <= 1048576),
    CONSTRAINT agent_tasks_max_retries_range CHECK (max_retries BETWEEN 0 AND 100),
    CONSTRAINT agent_tasks_trigger_vocabulary CHECK (trigger IN ('manual', 'scheduled', 'dependent'))
);

CREATE INDEX agent_tasks_status_priority_idx ON agent_tasks (status, priority DESC, created_at);
CREATE INDEX agent_tasks_agent_idx ON agent_tasks (agent_id, created_at DESC);
CREATE INDEX agent_tasks_created_idx ON agent_tasks (created_at DESC);
CREATE INDEX agent_tasks_job_idx ON agent_tasks (job_id);
CREATE INDEX agent_tasks_workflow_run_idx ON agent_tasks (workflow_run_id) WHERE workflow_run_id IS NOT NULL;

-- One row per attempt ---------------------------------------------------------------

CREATE TABLE agent_executions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    agent_id uuid NOT NULL REFERENCES ai_agents (id),
    org_id uuid NOT NULL DEFAULT runner_default_org_id() REFERENCES organizations (id),
    stream_id uuid NULL REFERENCES streams (id) ON DELETE SET NULL,
    task_id uuid NULL REFERENCES agent_tasks (id) ON DELETE CASCADE,
    attempt integer NOT NULL DEFAULT 1,
    job_id bigint NULL,
    daemon_id uuid NULL,
    status text NOT NULL DEFAULT 'queued' CHECK (status IN (
        'queued', 'running', 'completed', 'failed', 'cancelled', 'timeout',
        'rescued', 'interrupted')),
    started_at timestamptz NULL,
    completed_at timestamptz NULL,
    duration_ms integer NULL,
    input_data jsonb NULL,
    output_data jsonb NULL,
    goal_context jsonb NULL,
    results_summary jsonb NULL,
    error_message text NULL,
    metrics jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX agent_executions_task_idx ON agent_executions (task_id, attempt);
CREATE INDEX agent_executions_agent_idx ON agent_executions (agent_id, created_at DESC);
CREATE INDEX agent_executions_org_created_idx ON agent_executions (org_id, created_at DESC);
CREATE INDEX agent_executions_running_idx ON agent_executions (daemon_id) WHERE status = 'running';

-- Seed 003 logs -------------------------------------------------------------------

CREATE TABLE agent_task_logs (
    id bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY,
    task_id uuid NULL REFERENCES agent_tasks (id) ON DELETE CASCADE,
    execution_id uuid NULL,
    log_type text NOT NULL DEFAULT 'info' CHECK (log_type IN (
        'debug', 'info', 'success', 'error', 'warning', 'state_transition',
        'tool_success', 'tool_error', 'phase_advance', 'user_input_required')),
    message text NOT NULL,
    metadata jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX agent_task_logs_task_idx ON agent_task_logs (task_id, id);
CREATE INDEX agent_task_logs_created_idx ON agent_task_logs (created_at DESC);

-- `agent-runner logs --follow` listens here.
CREATE FUNCTION runner_notify_log_line() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('agent_runner_logs', NEW.id::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER agent_task_logs_notify AFTER INSERT ON agent_task_logs
    FOR EACH ROW EXECUTE FUNCTION runner_notify_log_line();

-- LLM cost ledger: one row per model call -------------------------------------------

CREATE TABLE llm_calls (
    id bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY,
    org_id uuid NOT NULL DEFAULT runner_default_org_id() REFERENCES organizations (id),
    agent_id uuid NULL REFERENCES ai_agents (id) ON DELETE SET NULL,
    task_id uuid NULL REFERENCES agent_tasks (id) ON DELETE SET NULL,
    execution_id uuid NULL REFERENCES agent_executions (id) ON DELETE SET NULL,
    call_index integer NOT NULL,
    model text NOT NULL,
    input_tokens integer NOT NULL DEFAULT 0 CHECK (input_tokens >= 0),
    output_tokens integer NOT NULL DEFAULT 0 CHECK (output_tokens >= 0),
    cache_creation_input_tokens integer NOT NULL DEFAULT 0 CHECK (cache_creation_input_tokens >= 0),
    cache_read_input_tokens integer NOT NULL DEFAULT 0 CHECK (cache_read_input_tokens >= 0),
    cost_usd numeric(14, 8) NOT NULL DEFAULT 0,
    price_version text NOT NULL,
    stop_reason text NULL,
    duration_ms integer NULL,
    request_id text NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (execution_id, call_index)
);

CREATE INDEX llm_calls_agent_created_idx ON llm_calls (agent_id, created_at DESC);

-- Daemons ---------------------------------------------------------------------------

CREATE TABLE runner_daemons (
    id uuid PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    version text NOT NULL,
    concurrency integer NOT NULL,
    poll_interval_seconds double precision NOT NULL,
    in_flight integer NOT NULL DEFAULT 0,
    -- after this long without a heartbeat the daemon is presumed dead and its
    -- running attempts are rescued by any other daemon
    dead_after interval NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_heartbeat timestamptz NOT NULL DEFAULT now(),
    stopping boolean NOT NULL DEFAULT false
);

CREATE VIEW runner_workers AS
SELECT id, host, pid, version, concurrency, poll_interval_seconds, in_flight,
       started_at, last_heartbeat, stopping
FROM runner_daemons
WHERE last_heartbeat > now() - dead_after;

-- A single row: cluster-wide switches (`agent-runner pause` / `resume`).
CREATE TABLE runner_control (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    paused boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO runner_control DEFAULT VALUES;

CREATE FUNCTION runner_notify_control() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('agent_runner_control', json_build_object('paused', NEW.paused)::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER runner_control_notify AFTER UPDATE ON runner_control
    FOR EACH ROW EXECUTE FUNCTION runner_notify_control();

CREATE FUNCTION runner_elapsed_ms(since timestamptz) RETURNS integer
    LANGUAGE sql VOLATILE AS $$
    SELECT greatest(0, round(extract(epoch FROM clock_timestamp() - since) * 1000))::integer
$$;

-- Delivery --------------------------------------------------------------------------

-- Defers the procrastinate job that carries one attempt of a task. Called in the
-- transaction that makes the task pending, so an enqueue joins the caller's
-- transaction and a rollback leaves no job behind.
CREATE FUNCTION runner_defer_attempt(p_task_id uuid, p_priority integer, p_at timestamptz)
    RETURNS bigint
    LANGUAGE sql AS $$
    SELECT (procrastinate_defer_jobs_v1(ARRAY[ROW(
        'agent_runner', 'agent_runner.attempt', p_priority, NULL, NULL,
        jsonb_build_object('task_id', p_task_id),
        CASE WHEN p_at > now() THEN p_at END
    )::procrastinate_job_to_defer_v1]))[1]
$$;

-- Ends an attempt: the task's new state and the execution row, in one call. Fenced:
-- nothing is written unless the attempt still owns its task; then it returns NULL.
-- Otherwise it returns the execution's duration in ms. A 'pending' end re-queues the
-- task with a fresh job after p_delay seconds (spending a retry when p_spend_retry).
-- With p_job_id, the attempt's procrastinate job is marked succeeded in the same
-- statement (what procrastinate's own finish would do in a second transaction).
CREATE FUNCTION runner_finish_attempt(
    p_task_id uuid, p_execution_id uuid, p_task_status text, p_execution_status text,
    p_spend_retry boolean, p_error text, p_output jsonb, p_summary jsonb, p_metrics jsonb,
    p_delay double precision, p_job_id bigint
) RETURNS integer
    LANGUAGE plpgsql AS $$
DECLARE
    run_at timestamptz := now() + make_interval(secs => p_delay);
    owned uuid;
    duration integer;
BEGIN
    UPDATE agent_tasks t
    SET status = p_task_status,
        retry_count = t.retry_count + CASE WHEN p_spend_retry THEN 1 ELSE 0 END,
        error_message = p_error,
        output = CASE WHEN p_task_status = 'completed' THEN p_output ELSE t.output END,
        completed_at = CASE WHEN p_task_status IN ('completed', 'failed', 'cancelled')
                            THEN now() END,
        scheduled_for = CASE WHEN p_task_status = 'pending' THEN run_at ELSE t.scheduled_for END,
        job_id = CASE WHEN p_task_status = 'pending'
                      THEN runner_defer_attempt(t.id, t.priority, run_at) ELSE t.job_id END,
        current_execution_id = CASE WHEN p_task_status = 'pending' THEN NULL
                                    ELSE t.current_execution_id END,
        cancel_requested = false,
        updated_at = now()
    WHERE t.id = p_task_id AND t.status = 'processing'
      AND t.current_execution_id = p_execution_id
    RETURNING t.id INTO owned;
    IF owned IS NULL THEN
        RETURN NULL;
    END IF;
    UPDATE agent_executions e
    SET status = p_execution_status,
        completed_at = clock_timestamp(),
        duration_ms = runner_elapsed_ms(e.started_at),
        output_data = p_output,
        results_summary = p_summary,
        error_message = p_error,
        metrics = e.metrics || coalesce(p_metrics, '{}')
    WHERE e.id = p_execution_id AND e.status = 'running'
    RETURNING e.duration_ms INTO duration;
    IF duration IS NULL THEN
        -- The task said the attempt owned it but the execution was not running: the
        -- two disagree, which no code path produces. Refuse rather than guess.
        RAISE EXCEPTION 'execution % of task % is not running', p_execution_id, p_task_id;
    END IF;
    IF p_job_id IS NOT NULL THEN
        -- Lock order task -> job, as in cancel_agent_task and the rescuer.
        UPDATE procrastinate_jobs
        SET status = 'succeeded', abort_requested = false, attempts = attempts + 1
        WHERE id = p_job_id AND status = 'doing';
    END IF;
    RETURN duration;
END;
$$;

CREATE FUNCTION runner_agent_tasks_before_insert() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    agent ai_agents%ROWTYPE;
BEGIN
    SELECT * INTO agent FROM ai_agents WHERE id = NEW.agent_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown agent: %', NEW.agent_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF NOT agent.is_active THEN
        RAISE EXCEPTION 'agent "%" is disabled; enable it before enqueueing', agent.name
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.priority IS NULL OR NEW.priority NOT BETWEEN 1 AND 10 THEN
        RAISE EXCEPTION 'priority must be between 1 and 10, got %', NEW.priority
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.status <> 'pending' THEN
        RAISE EXCEPTION 'a new task must be pending, got status "%"', NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    NEW.task_type := coalesce(NEW.task_type, agent.agent_type);
    NEW.max_retries := coalesce(NEW.max_retries, agent.max_retries);
    NEW.org_id := agent.org_id;
    NEW.payload := coalesce(NEW.payload, '{}');
    NEW.scheduled_for := coalesce(NEW.scheduled_for, now());
    NEW.job_id := runner_defer_attempt(NEW.id, NEW.priority, NEW.scheduled_for);
    RETURN NEW;
END;
$$;

CREATE TRIGGER agent_tasks_before_insert BEFORE INSERT ON agent_tasks
    FOR EACH ROW EXECUTE FUNCTION runner_agent_tasks_before_insert();

-- Admin functions ---------------------------------------------------------------------

CREATE FUNCTION runner_resolve_agent(p_agent text) RETURNS uuid
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    found_ids uuid[];
BEGIN
    IF p_agent IS NULL OR p_agent = '' THEN
        RAISE EXCEPTION 'agent name or id is required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_agent ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        SELECT array_agg(id) INTO found_ids FROM ai_agents WHERE id = p_agent::uuid;
    END IF;
    IF found_ids IS NULL THEN
        SELECT array_agg(id ORDER BY org_id = runner_default_org_id() DESC) INTO found_ids
        FROM ai_agents WHERE name = p_agent;
    END IF;
    IF found_ids IS NULL THEN
        RAISE EXCEPTION 'unknown agent: %', p_agent USING ERRCODE = 'no_data_found';
    END IF;
    IF cardinality(found_ids) > 1 THEN
        RAISE EXCEPTION 'agent name "%" exists in several organizations; pass its id', p_agent
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN found_ids[1];
END;
$$;

CREATE FUNCTION enqueue_agent_task(
    agent text,
    payload jsonb DEFAULT '{}',
    priority integer DEFAULT 5,
    scheduled_for timestamptz DEFAULT now()
) RETURNS uuid
    LANGUAGE plpgsql AS $$
DECLARE
    new_id uuid;
BEGIN
    IF priority IS NULL OR priority NOT BETWEEN 1 AND 10 THEN
        RAISE EXCEPTION 'priority must be between 1 and 10, got %', priority
            USING ERRCODE = 'check_violation';
    END IF;
    IF payload IS NULL OR jsonb_typeof(payload) <> 'object' THEN
        RAISE EXCEPTION 'payload must be a JSON object' USING ERRCODE = 'check_violation';
    END IF;
    INSERT INTO agent_tasks (agent_id, payload, priority, scheduled_for)
    VALUES (runner_resolve_agent(agent), payload, priority, coalesce(scheduled_for, now()))
    RETURNING id INTO new_id;
    RETURN new_id;
END;
$$;

-- A pending task never runs; a processing one is cancelled cooperatively by its
-- daemon (procrastinate's abort request reaches it through LISTEN/NOTIFY).
CREATE FUNCTION cancel_agent_task(p_task_id uuid) RETURNS boolean
    LANGUAGE plpgsql AS $$
DECLARE
    t agent_tasks%ROWTYPE;
BEGIN
    SELECT * INTO t FROM agent_tasks WHERE id = p_task_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF t.status = 'pending' THEN
        UPDATE agent_tasks
        SET status = 'cancelled', error_message = 'cancelled before it started',
            completed_at = now(), updated_at = now(), job_id = NULL
        WHERE id = p_task_id;
        IF t.job_id IS NOT NULL THEN
            PERFORM procrastinate_cancel_job_v1(t.job_id, false, false);
        END IF;
        RETURN true;
    ELSIF t.status = 'processing' THEN
        UPDATE agent_tasks SET cancel_requested = true, updated_at = now() WHERE id = p_task_id;
        IF t.job_id IS NOT NULL THEN
            PERFORM procrastinate_cancel_job_v1(t.job_id, true, false);
        END IF;
        RETURN true;
    END IF;
    RETURN false;
END;
$$;

-- Re-queues a failed or cancelled task with a fresh retry budget. Its executions are
-- kept, so the next attempt's number continues the count.
CREATE FUNCTION retry_agent_task(p_task_id uuid) RETURNS boolean
    LANGUAGE plpgsql AS $$
DECLARE
    t agent_tasks%ROWTYPE;
BEGIN
    SELECT * INTO t FROM agent_tasks WHERE id = p_task_id FOR UPDATE;
    IF NOT FOUND OR t.status NOT IN ('failed', 'cancelled') THEN
        RETURN false;
    END IF;
    UPDATE agent_tasks
    SET status = 'pending', retry_count = 0, error_message = NULL, completed_at = NULL,
        cancel_requested = false, current_execution_id = NULL, scheduled_for = now(),
        updated_at = now(), job_id = runner_defer_attempt(p_task_id, t.priority, now())
    WHERE id = p_task_id;
    RETURN true;
END;
$$;

-- Views ------------------------------------------------------------------------------

CREATE VIEW agent_task_stats AS
SELECT count(*) FILTER (WHERE status = 'pending') AS pending,
       count(*) FILTER (WHERE status = 'processing') AS processing,
       count(*) FILTER (WHERE status = 'completed') AS completed,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
       count(*) AS total
FROM agent_tasks;

-- Seed 002's performance figures, per agent, over finished attempts.
CREATE VIEW agent_performance AS
SELECT a.id AS agent_id,
       a.name AS agent_name,
       a.agent_type,
       count(e.id) AS total_executions,
       count(e.id) FILTER (WHERE e.status = 'completed') AS successful_executions,
       count(e.id) FILTER (WHERE e.status IN ('failed', 'timeout', 'rescued')) AS failed_executions,
       round(avg(e.duration_ms))::bigint AS average_execution_time_ms,
       CASE WHEN count(e.id) = 0 THEN NULL
            ELSE round(100.0 * count(e.id) FILTER (WHERE e.status = 'completed') / count(e.id), 2)
       END AS success_rate,
       max(e.completed_at) AS last_executed_at
FROM ai_agents a
LEFT JOIN agent_executions e
       ON e.agent_id = a.id AND e.status NOT IN ('queued', 'running')
GROUP BY a.id, a.name, a.agent_type;
