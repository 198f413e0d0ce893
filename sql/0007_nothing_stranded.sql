-- Nothing stranded, nothing lost (issue: ordinary production faults).
--
-- 1. Each daemon's heartbeat names the attempts it is running. An attempt is orphaned
--    when its daemon stopped heartbeating, or when its live daemon no longer names it
--    (it ended without a finish that reached the database). The delivery job's status
--    no longer decides: an attempt keeps running in its daemon while the delivery
--    worker is restarted, and finishes once the database is back.
-- 2. A rescued task whose cancel was requested ends cancelled; it is never re-queued.
-- 3. The reconciler (runner_reconcile_pending) gives a fresh delivery job to every
--    pending task that has none it could run: a claim that failed before it committed,
--    a job that ended without a finish, or a task set to 'pending' by a plain UPDATE
--    (the seed's troubleshooting advice). Such an UPDATE is thereby delivered within
--    one rescuer pass; it keeps the task's retry count (retry_agent_task resets it).

ALTER TABLE runner_daemons ADD COLUMN running_task_ids uuid[] NOT NULL DEFAULT '{}';

-- Rescue orphaned attempts (at most p_limit): each re-queued with a fresh job
-- (spending a retry), failed when no retries remain, or cancelled when its cancel
-- was requested. Executions whose task has already moved on are closed as rescued.
CREATE FUNCTION runner_rescue_orphans(p_min_age double precision, p_limit integer DEFAULT 500)
    RETURNS TABLE (task_id uuid, execution_id uuid, agent_type text, outcome text)
    LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    WITH orphan AS (
        SELECT e.id AS execution_id, e.task_id
        FROM agent_executions e
        LEFT JOIN runner_daemons d ON d.id = e.daemon_id
        WHERE e.status = 'running'
          AND e.started_at < now() - make_interval(secs => p_min_age)
          AND (d.id IS NULL
               OR d.last_heartbeat < now() - d.dead_after
               -- a live daemon that no longer runs it (allowing for an attempt that
               -- started after the heartbeat's snapshot was taken)
               OR (NOT e.task_id = ANY (d.running_task_ids)
                   AND e.started_at < d.last_heartbeat - least(d.dead_after, interval '10 seconds')))
        ORDER BY e.started_at
        LIMIT p_limit
    ), task AS (
        SELECT t.id, t.retry_count, t.max_retries, t.cancel_requested, t.job_id,
               o.execution_id
        FROM agent_tasks t JOIN orphan o ON o.task_id = t.id
        WHERE t.status = 'processing' AND t.current_execution_id = o.execution_id
        FOR UPDATE OF t SKIP LOCKED
    ), old_job AS (
        UPDATE procrastinate_jobs j SET status = 'failed'
        FROM task WHERE j.id = task.job_id AND j.status IN ('doing', 'todo')
    ), lost AS (
        UPDATE agent_executions e
        SET status = 'rescued', completed_at = clock_timestamp(),
            duration_ms = runner_elapsed_ms(e.started_at),
            error_message = CASE
                WHEN task.id IS NULL THEN 'attempt lost; its task had already moved on'
                WHEN task.cancel_requested THEN 'attempt lost after its cancel was requested'
                ELSE 'attempt lost: its daemon stopped heartbeating or no longer ran it; re-queued'
            END
        FROM orphan LEFT JOIN task ON task.execution_id = orphan.execution_id
        WHERE e.id = orphan.execution_id AND e.status = 'running'
          -- an orphan whose task row is locked right now is left for the next pass
          AND (task.id IS NOT NULL OR NOT EXISTS (
                  SELECT 1 FROM agent_tasks t2
                  WHERE t2.id = orphan.task_id AND t2.status = 'processing'
                    AND t2.current_execution_id = orphan.execution_id))
    ), ended AS (
        UPDATE agent_tasks t
        SET retry_count = t.retry_count + CASE WHEN task.cancel_requested THEN 0 ELSE 1 END,
            status = CASE WHEN task.cancel_requested THEN 'cancelled'
                          WHEN t.retry_count < t.max_retries THEN 'pending'
                          ELSE 'failed' END,
            error_message = CASE
                WHEN task.cancel_requested THEN 'cancelled while running (its attempt was lost)'
                ELSE 'attempt lost: its daemon stopped heartbeating or no longer ran it'
            END,
            completed_at = CASE WHEN NOT task.cancel_requested
                                     AND t.retry_count < t.max_retries THEN NULL
                                ELSE now() END,
            current_execution_id = NULL,
            cancel_requested = false,
            job_id = CASE WHEN NOT task.cancel_requested AND t.retry_count < t.max_retries
                          THEN runner_defer_attempt(t.id, t.priority, now()) ELSE NULL END,
            updated_at = now()
        FROM task WHERE t.id = task.id
        RETURNING t.id, t.agent_id, t.status, task.execution_id
    )
    SELECT ended.id, ended.execution_id, a.agent_type,
           CASE ended.status WHEN 'pending' THEN 'requeued' ELSE ended.status END
    FROM ended JOIN ai_agents a ON a.id = ended.agent_id;
END;
$$;

-- Give a fresh delivery job to pending tasks that have none it could run (at most
-- p_limit): no job, a job that is gone or ended, or a job a worker fetched more than
-- p_stalled_after seconds ago without claiming the task (the claim failed).
CREATE FUNCTION runner_reconcile_pending(p_stalled_after double precision,
                                         p_limit integer DEFAULT 500)
    RETURNS TABLE (task_id uuid, previous_job_status text)
    LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    WITH stranded AS (
        SELECT t.id, t.priority, t.scheduled_for, t.job_id, j.status::text AS job_status
        FROM agent_tasks t
        LEFT JOIN procrastinate_jobs j ON j.id = t.job_id
        WHERE t.status = 'pending'
          AND (j.id IS NULL
               OR j.status NOT IN ('todo', 'doing')
               OR (j.status = 'doing' AND coalesce(
                       (SELECT max(ev.at) FROM procrastinate_events ev
                        WHERE ev.job_id = j.id AND ev.type = 'started'),
                       '-infinity') < now() - make_interval(secs => p_stalled_after)))
        ORDER BY t.priority DESC, t.created_at
        LIMIT p_limit
        FOR UPDATE OF t SKIP LOCKED
    ), old_job AS (
        -- a late claim through the old job then finds the task re-queued elsewhere
        UPDATE procrastinate_jobs j SET status = 'failed'
        FROM stranded s WHERE j.id = s.job_id AND j.status = 'doing'
    ), redelivered AS (
        UPDATE agent_tasks t
        SET job_id = runner_defer_attempt(t.id, t.priority, greatest(t.scheduled_for, now())),
            current_execution_id = NULL,
            completed_at = NULL,
            cancel_requested = false,
            updated_at = now()
        FROM stranded s WHERE t.id = s.id
        RETURNING t.id, s.job_status
    )
    SELECT redelivered.id, coalesce(redelivered.job_status, 'missing') FROM redelivered;
END;
$$;
