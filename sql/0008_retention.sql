-- Retention, and queries that stay fast as history grows (issue 10, items 1 and 2).
--
-- 1. Retention (CONTRACT.md, "Retention"; runner/store/retention.py holds the deletes).
--    Finished tasks past their retention go in batches ordered by completed_at, each
--    batch one short transaction that takes its tasks FOR UPDATE SKIP LOCKED and never
--    looks at a pending or processing row. The indexes below let every batch start at
--    the oldest expired row instead of scanning, and let the foreign keys that point at
--    agent_tasks and agent_executions (ON DELETE SET NULL in llm_calls, cron_fires,
--    stream_insights) find their rows by index: without them, deleting one task is a
--    sequential scan of each of those tables.
--
-- 2. Counting without scanning history. The task counts (agent_task_stats, the
--    agent_runner_tasks gauges, `agent-runner status`) and the per-agent figures
--    (agent_performance, `agent-runner agents`) used to count every row, every 5 s on
--    every daemon. Now:
--    * pending and processing are counted exactly, from the status index: their number
--      is the backlog and the work in flight, which is what an operator must see exactly
--      and what stays small while history grows;
--    * completed, failed and cancelled, and the per-agent execution figures, are
--      maintained counters: triggers append a delta row in the transaction that changes
--      a status (a statement-level trigger with a transition table for deletes, so a
--      prune batch of 5,000 rows writes one delta per status, not 5,000), and
--      runner_fold_counters() folds the deltas into one base row per status (per agent)
--      every few seconds (the daemon's gauge refresh, and every prune).
--    Why deltas rather than UPDATE of a counter row: every finish would update the same
--    row, and its lock is held until commit, so finishes would queue behind each other
--    (and a multi-row transaction, such as the rescuer's, could deadlock with another on
--    two counter rows). An INSERT into a table without indexes takes no lock anyone else
--    waits for. A reader sums base + deltas in its own snapshot, so the figures are exact
--    and consistent with the status counts read in the same statement.
--    runner_rebuild_counters() recounts from scratch (a repair tool: it blocks task and
--    execution writes while it counts).

-- Retention indexes ----------------------------------------------------------------

-- Where each prune batch starts: the oldest finished tasks of one status. Pending and
-- processing rows are not in it, so claims never touch it.
CREATE INDEX agent_tasks_finished_idx ON agent_tasks (status, completed_at)
    WHERE status IN ('completed', 'failed', 'cancelled');

-- Foreign keys whose ON DELETE SET NULL runs once per deleted task or execution.
CREATE INDEX llm_calls_task_idx ON llm_calls (task_id) WHERE task_id IS NOT NULL;
CREATE INDEX cron_fires_task_idx ON cron_fires (task_id) WHERE task_id IS NOT NULL;
CREATE INDEX stream_insights_execution_idx ON stream_insights (execution_id)
    WHERE execution_id IS NOT NULL;

-- RUNNER_LEDGER_RETENTION_DAYS deletes the oldest model calls first.
CREATE INDEX llm_calls_created_idx ON llm_calls (created_at);

-- Finished workflow runs whose tasks have all been pruned go too.
CREATE INDEX workflow_runs_finished_idx ON workflow_runs (completed_at)
    WHERE status IN ('completed', 'failed');

-- What the prune has already looked at among procrastinate's jobs: every job up to
-- this id was either deleted, still referenced by a task or an execution (it goes with
-- them), or not finished. The scan for unreferenced jobs resumes after it.
CREATE TABLE runner_prune_state (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    jobs_checked_through bigint NOT NULL DEFAULT 0,
    last_pruned_at timestamptz NULL
);
INSERT INTO runner_prune_state DEFAULT VALUES;

-- Task counts by finished status ------------------------------------------------------

CREATE TABLE runner_task_counts (
    status text PRIMARY KEY CHECK (status IN ('completed', 'failed', 'cancelled')),
    tasks bigint NOT NULL DEFAULT 0
);

-- Appended to by the triggers below; folded into runner_task_counts. No index and no
-- key on purpose: an insert takes no lock that another writer waits for.
CREATE TABLE runner_task_count_deltas (
    status text NOT NULL,
    delta bigint NOT NULL
);

CREATE FUNCTION runner_count_task_row() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO runner_task_count_deltas (status, delta) VALUES (NEW.status, 1);
    ELSE
        INSERT INTO runner_task_count_deltas (status, delta)
        SELECT v.status, v.delta
        FROM (VALUES (OLD.status, -1), (NEW.status, 1)) AS v(status, delta)
        WHERE v.status IN ('completed', 'failed', 'cancelled');
    END IF;
    RETURN NULL;
END;
$$;

-- A task enters or leaves a finished status: its finish, a retry of a failed or
-- cancelled task, the rescuer, or a plain UPDATE. Claims (pending -> processing) and
-- backoffs (processing -> pending) do not fire it.
CREATE TRIGGER agent_tasks_count_status AFTER UPDATE OF status ON agent_tasks
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          AND (OLD.status IN ('completed', 'failed', 'cancelled')
               OR NEW.status IN ('completed', 'failed', 'cancelled')))
    EXECUTE FUNCTION runner_count_task_row();

-- New tasks are pending (runner_agent_tasks_before_insert); only a load that bypasses
-- that trigger inserts finished rows.
CREATE TRIGGER agent_tasks_count_insert AFTER INSERT ON agent_tasks
    FOR EACH ROW WHEN (NEW.status IN ('completed', 'failed', 'cancelled'))
    EXECUTE FUNCTION runner_count_task_row();

CREATE FUNCTION runner_count_task_deletes() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO runner_task_count_deltas (status, delta)
    SELECT status, -count(*) FROM gone
    WHERE status IN ('completed', 'failed', 'cancelled')
    GROUP BY status;
    RETURN NULL;
END;
$$;

CREATE TRIGGER agent_tasks_count_deletes AFTER DELETE ON agent_tasks
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION runner_count_task_deletes();

CREATE FUNCTION runner_count_tasks_truncated() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM runner_task_count_deltas;
    UPDATE runner_task_counts SET tasks = 0;
    RETURN NULL;
END;
$$;

CREATE TRIGGER agent_tasks_count_truncate AFTER TRUNCATE ON agent_tasks
    FOR EACH STATEMENT EXECUTE FUNCTION runner_count_tasks_truncated();

-- Per-agent execution figures (agent_performance) --------------------------------------

-- One row per agent: the finished executions (status other than queued and running),
-- as agent_performance counts them. last_executed_at is the latest finish seen: a
-- deleted execution cannot lower a maximum, so it stays after its row is pruned.
CREATE TABLE runner_agent_figures (
    agent_id uuid PRIMARY KEY,
    executions bigint NOT NULL DEFAULT 0,
    successful bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0,
    duration_ms_sum bigint NOT NULL DEFAULT 0,
    durations bigint NOT NULL DEFAULT 0,
    last_executed_at timestamptz NULL
);

CREATE TABLE runner_agent_figure_deltas (
    agent_id uuid NOT NULL,
    executions bigint NOT NULL,
    successful bigint NOT NULL,
    failed bigint NOT NULL,
    duration_ms_sum bigint NOT NULL,
    durations bigint NOT NULL,
    last_executed_at timestamptz NULL
);

CREATE FUNCTION runner_count_execution_row() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.status NOT IN ('queued', 'running') THEN
        INSERT INTO runner_agent_figure_deltas
        VALUES (OLD.agent_id, -1, -(OLD.status = 'completed')::int,
                -(OLD.status IN ('failed', 'timeout', 'rescued'))::int,
                -coalesce(OLD.duration_ms, 0), -(OLD.duration_ms IS NOT NULL)::int, NULL);
    END IF;
    IF NEW.status NOT IN ('queued', 'running') THEN
        INSERT INTO runner_agent_figure_deltas
        VALUES (NEW.agent_id, 1, (NEW.status = 'completed')::int,
                (NEW.status IN ('failed', 'timeout', 'rescued'))::int,
                coalesce(NEW.duration_ms, 0), (NEW.duration_ms IS NOT NULL)::int,
                NEW.completed_at);
    END IF;
    RETURN NULL;
END;
$$;

-- The finish of an attempt (running -> completed, failed, ...), a rescue, or a plain
-- UPDATE of a finished row's figures. The claim inserts a running row: not counted.
CREATE TRIGGER agent_executions_count_update
    AFTER UPDATE OF status, agent_id, duration_ms, completed_at ON agent_executions
    FOR EACH ROW
    WHEN ((OLD.status, OLD.agent_id, OLD.duration_ms, OLD.completed_at)
              IS DISTINCT FROM (NEW.status, NEW.agent_id, NEW.duration_ms, NEW.completed_at)
          AND (OLD.status NOT IN ('queued', 'running') OR NEW.status NOT IN ('queued', 'running')))
    EXECUTE FUNCTION runner_count_execution_row();

CREATE TRIGGER agent_executions_count_insert AFTER INSERT ON agent_executions
    FOR EACH ROW WHEN (NEW.status NOT IN ('queued', 'running'))
    EXECUTE FUNCTION runner_count_execution_row();

CREATE FUNCTION runner_count_execution_deletes() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO runner_agent_figure_deltas
    SELECT agent_id, -count(*), -count(*) FILTER (WHERE status = 'completed'),
           -count(*) FILTER (WHERE status IN ('failed', 'timeout', 'rescued')),
           -coalesce(sum(duration_ms), 0), -count(duration_ms), NULL
    FROM gone
    WHERE status NOT IN ('queued', 'running')
    GROUP BY agent_id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER agent_executions_count_deletes AFTER DELETE ON agent_executions
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION runner_count_execution_deletes();

CREATE FUNCTION runner_count_executions_truncated() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM runner_agent_figure_deltas;
    DELETE FROM runner_agent_figures;
    RETURN NULL;
END;
$$;

CREATE TRIGGER agent_executions_count_truncate AFTER TRUNCATE ON agent_executions
    FOR EACH STATEMENT EXECUTE FUNCTION runner_count_executions_truncated();

-- Folding and rebuilding ----------------------------------------------------------------

-- Folds the deltas into the base rows; returns how many delta rows it folded. One
-- folder at a time (a transaction-level try-lock: a second caller returns 0 at once).
-- Rows inserted by transactions still in progress are not visible here and wait for
-- the next fold, so nothing is counted twice or lost.
CREATE FUNCTION runner_fold_counters() RETURNS bigint
    LANGUAGE plpgsql AS $$
DECLARE
    folded_tasks bigint;
    folded_agents bigint;
BEGIN
    IF NOT pg_try_advisory_xact_lock(4706917662226421297) THEN  -- "ARCOUNT1"
        RETURN 0;
    END IF;
    WITH gone AS (
        DELETE FROM runner_task_count_deltas RETURNING status, delta
    ), total AS (
        SELECT status, sum(delta) AS delta, count(*) AS deltas FROM gone GROUP BY status
    ), applied AS (
        UPDATE runner_task_counts c SET tasks = c.tasks + total.delta
        FROM total WHERE c.status = total.status
    )
    SELECT coalesce(sum(deltas), 0) INTO folded_tasks FROM total;

    WITH gone AS (
        DELETE FROM runner_agent_figure_deltas RETURNING *
    ), total AS (
        SELECT agent_id, sum(executions) AS executions, sum(successful) AS successful,
               sum(failed) AS failed, sum(duration_ms_sum) AS duration_ms_sum,
               sum(durations) AS durations, max(last_executed_at) AS last_executed_at,
               count(*) AS deltas
        FROM gone GROUP BY agent_id
    ), applied AS (
        INSERT INTO runner_agent_figures AS f (agent_id, executions, successful, failed,
                                               duration_ms_sum, durations, last_executed_at)
        SELECT agent_id, executions, successful, failed, duration_ms_sum, durations,
               last_executed_at
        FROM total
        ON CONFLICT (agent_id) DO UPDATE
        SET executions = f.executions + excluded.executions,
            successful = f.successful + excluded.successful,
            failed = f.failed + excluded.failed,
            duration_ms_sum = f.duration_ms_sum + excluded.duration_ms_sum,
            durations = f.durations + excluded.durations,
            last_executed_at = greatest(f.last_executed_at, excluded.last_executed_at)
    )
    SELECT coalesce(sum(deltas), 0) INTO folded_agents FROM total;
    RETURN folded_tasks + folded_agents;
END;
$$;

-- Recounts everything from the tables (a full scan of agent_tasks and
-- agent_executions). The SHARE locks hold off every write to both tables while it
-- counts, so no change can slip between the count and the reset of the deltas.
CREATE FUNCTION runner_rebuild_counters() RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(4706917662226421297);  -- "ARCOUNT1": no fold meanwhile
    LOCK TABLE agent_tasks, agent_executions IN SHARE MODE;
    DELETE FROM runner_task_count_deltas;
    UPDATE runner_task_counts c
    SET tasks = (SELECT count(*) FROM agent_tasks t WHERE t.status = c.status);
    DELETE FROM runner_agent_figure_deltas;
    DELETE FROM runner_agent_figures;
    INSERT INTO runner_agent_figures (agent_id, executions, successful, failed,
                                      duration_ms_sum, durations, last_executed_at)
    SELECT agent_id, count(*), count(*) FILTER (WHERE status = 'completed'),
           count(*) FILTER (WHERE status IN ('failed', 'timeout', 'rescued')),
           coalesce(sum(duration_ms), 0), count(duration_ms), max(completed_at)
    FROM agent_executions
    WHERE status NOT IN ('queued', 'running')
    GROUP BY agent_id;
END;
$$;

INSERT INTO runner_task_counts (status) VALUES ('completed'), ('failed'), ('cancelled');
-- The triggers exist from here on and this transaction holds their tables' locks, so
-- the first count is exact.
SELECT runner_rebuild_counters();

-- The views, same names and columns as in 0001_core.sql ----------------------------------

CREATE OR REPLACE VIEW agent_task_stats AS
WITH live AS (
    -- the status index: as many entries as the backlog and the work in flight
    SELECT count(*) FILTER (WHERE status = 'pending') AS pending,
           count(*) FILTER (WHERE status = 'processing') AS processing
    FROM agent_tasks
    WHERE status IN ('pending', 'processing')
), finished AS (
    SELECT coalesce(sum(n) FILTER (WHERE status = 'completed'), 0)::bigint AS completed,
           coalesce(sum(n) FILTER (WHERE status = 'failed'), 0)::bigint AS failed,
           coalesce(sum(n) FILTER (WHERE status = 'cancelled'), 0)::bigint AS cancelled
    FROM (SELECT status, tasks FROM runner_task_counts
          UNION ALL
          SELECT status, delta FROM runner_task_count_deltas) AS c(status, n)
)
SELECT live.pending, live.processing, finished.completed, finished.failed,
       finished.cancelled,
       live.pending + live.processing + finished.completed + finished.failed
           + finished.cancelled AS total
FROM live, finished;

CREATE OR REPLACE VIEW agent_performance AS
SELECT a.id AS agent_id,
       a.name AS agent_name,
       a.agent_type,
       coalesce(f.executions, 0)::bigint AS total_executions,
       coalesce(f.successful, 0)::bigint AS successful_executions,
       coalesce(f.failed, 0)::bigint AS failed_executions,
       CASE WHEN f.durations > 0 THEN round(f.duration_ms_sum::numeric / f.durations)::bigint
       END AS average_execution_time_ms,
       CASE WHEN coalesce(f.executions, 0) = 0 THEN NULL
            ELSE round(100.0 * f.successful / f.executions, 2)
       END AS success_rate,
       f.last_executed_at
FROM ai_agents a
LEFT JOIN (
    SELECT agent_id, sum(executions) AS executions, sum(successful) AS successful,
           sum(failed) AS failed, sum(duration_ms_sum) AS duration_ms_sum,
           sum(durations) AS durations, max(last_executed_at) AS last_executed_at
    FROM (SELECT agent_id, executions, successful, failed, duration_ms_sum, durations,
                 last_executed_at
          FROM runner_agent_figures
          UNION ALL
          SELECT agent_id, executions, successful, failed, duration_ms_sum, durations,
                 last_executed_at
          FROM runner_agent_figure_deltas) AS c
    GROUP BY agent_id
) AS f ON f.agent_id = a.id;
