-- LLM budgets and the provider limiter shared by every daemon (CONTRACT.md, "LLM budgets
-- and limits"; issue 12 items 1 and 2).
--
-- Budgets: spend is counted from llm_calls in the current UTC period, plus the open
-- reservations of calls in flight. runner_llm_reserve takes a reservation in one short
-- transaction that locks the budget rows first (FOR UPDATE), so concurrent attempts of
-- any number of daemons are serialised on the check: each can overshoot by at most the
-- one call whose estimate was wrong. A reservation is deleted once its call's ledger row
-- is written (or the attempt ends); one left by a dead daemon expires.
--
-- Limiter: one row per model in llm_rate_limits holds three token buckets (requests,
-- input tokens, output tokens per window). runner_llm_take_capacity refills them by the
-- time elapsed and takes capacity in the same locked update; a 429's retry-after sets
-- paused_until, which every daemon's next take honours; runner_llm_learn applies what
-- each response says of the limits.

CREATE TABLE llm_budgets (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL DEFAULT runner_default_org_id() REFERENCES organizations (id),
    -- NULL: the whole organization
    agent_id uuid NULL REFERENCES ai_agents (id) ON DELETE CASCADE,
    period text NOT NULL CHECK (period IN ('day', 'month')),
    limit_usd numeric NULL CHECK (limit_usd >= 0),
    limit_tokens bigint NULL CHECK (limit_tokens >= 0),
    is_active boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (limit_usd IS NOT NULL OR limit_tokens IS NOT NULL)
);

CREATE INDEX llm_budgets_scope_idx ON llm_budgets (org_id, agent_id) WHERE is_active;

-- A cap per task, over all its attempts.
ALTER TABLE ai_agents ADD COLUMN max_cost_usd numeric NULL CHECK (max_cost_usd >= 0);

-- An organization's spend in a period (an agent's uses llm_calls_agent_created_idx, a
-- task's llm_calls_task_idx).
CREATE INDEX llm_calls_org_created_idx ON llm_calls (org_id, created_at);

CREATE TABLE llm_budget_reservations (
    id bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY,
    org_id uuid NOT NULL,
    agent_id uuid NULL,
    task_id uuid NULL,
    execution_id uuid NULL,
    cost_usd numeric NOT NULL CHECK (cost_usd >= 0),
    tokens bigint NOT NULL CHECK (tokens >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

CREATE INDEX llm_budget_reservations_org_idx ON llm_budget_reservations (org_id, agent_id);
CREATE INDEX llm_budget_reservations_execution_idx ON llm_budget_reservations (execution_id);

-- The start of the UTC period that contains p_at, and of the next one.
CREATE FUNCTION runner_budget_period_start(p_period text, p_at timestamptz) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE AS $$
    SELECT date_trunc(p_period, p_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
$$;

CREATE FUNCTION runner_budget_next_period(p_period text, p_at timestamptz) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE AS $$
    SELECT (date_trunc(p_period, p_at AT TIME ZONE 'UTC')
            + CASE p_period WHEN 'day' THEN interval '1 day' ELSE interval '1 month' END)
           AT TIME ZONE 'UTC'
$$;

-- Each budget with what counts against it now: the ledger's spend in the current
-- period and the open reservations of its scope.
CREATE FUNCTION runner_budget_spend(p_budget llm_budgets)
    RETURNS TABLE (spent_usd numeric, spent_tokens bigint, reserved_usd numeric,
                   reserved_tokens bigint)
    LANGUAGE sql STABLE AS $$
    SELECT
        (SELECT coalesce(sum(c.cost_usd), 0) FROM llm_calls c
         WHERE c.org_id = p_budget.org_id
           AND (p_budget.agent_id IS NULL OR c.agent_id = p_budget.agent_id)
           AND c.created_at >= runner_budget_period_start(p_budget.period, now())),
        (SELECT coalesce(sum(c.input_tokens + c.output_tokens + c.cache_creation_input_tokens
                             + c.cache_read_input_tokens), 0)::bigint FROM llm_calls c
         WHERE c.org_id = p_budget.org_id
           AND (p_budget.agent_id IS NULL OR c.agent_id = p_budget.agent_id)
           AND c.created_at >= runner_budget_period_start(p_budget.period, now())),
        (SELECT coalesce(sum(r.cost_usd), 0) FROM llm_budget_reservations r
         WHERE r.org_id = p_budget.org_id AND r.expires_at > now()
           AND (p_budget.agent_id IS NULL OR r.agent_id = p_budget.agent_id)),
        (SELECT coalesce(sum(r.tokens), 0)::bigint FROM llm_budget_reservations r
         WHERE r.org_id = p_budget.org_id AND r.expires_at > now()
           AND (p_budget.agent_id IS NULL OR r.agent_id = p_budget.agent_id))
$$;

-- Reserve one call's estimate against every active budget of its scope and against the
-- task's own max_cost_usd. Returns one row: the reservation's id when the call may be
-- made; otherwise NULL and what stopped it (blocked = 'budget' with the budget, the
-- message and the start of its next period, or 'cost_cap').
CREATE FUNCTION runner_llm_reserve(
    p_org uuid, p_agent uuid, p_task uuid, p_execution uuid,
    p_cost numeric, p_tokens bigint, p_ttl double precision
) RETURNS TABLE (reservation_id bigint, blocked text, budget_id uuid, message text,
                 resume_at timestamptz)
    LANGUAGE plpgsql AS $$
DECLARE
    b llm_budgets;
    s record;
    cap numeric;
    task_spent numeric;
    agent_name text;
    reserved bigint;
BEGIN
    -- The lock that serialises every check of these budgets (id order: no deadlock).
    FOR b IN
        SELECT * FROM llm_budgets
        WHERE org_id = p_org AND is_active AND (agent_id IS NULL OR agent_id = p_agent)
        ORDER BY id
        FOR UPDATE
    LOOP
        SELECT * INTO s FROM runner_budget_spend(b);
        IF (b.limit_usd IS NOT NULL
                AND s.spent_usd + s.reserved_usd + p_cost > b.limit_usd)
           OR (b.limit_tokens IS NOT NULL
                AND s.spent_tokens + s.reserved_tokens + p_tokens > b.limit_tokens) THEN
            SELECT a.name INTO agent_name FROM ai_agents a WHERE a.id = b.agent_id;
            budget_id := b.id;
            blocked := 'budget';
            resume_at := runner_budget_next_period(b.period, now());
            message := format(
                'budget reached: %s %s budget %s (%s) has %s spent and %s reserved; '
                || 'this call needs about %s; deferred until %s',
                CASE WHEN b.agent_id IS NULL THEN 'organization'
                     ELSE format('agent %L', agent_name) END,
                b.period, b.id,
                concat_ws(', ',
                    CASE WHEN b.limit_usd IS NOT NULL THEN format('limit $%s', b.limit_usd) END,
                    CASE WHEN b.limit_tokens IS NOT NULL
                         THEN format('limit %s tokens', b.limit_tokens) END),
                format('$%s / %s tokens', round(s.spent_usd, 6), s.spent_tokens),
                format('$%s / %s tokens', round(s.reserved_usd, 6), s.reserved_tokens),
                format('$%s / %s tokens', round(p_cost, 6), p_tokens),
                to_char(resume_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'));
            PERFORM runner_webhook_emit(p_org, 'budget.reached', jsonb_build_object(
                'budget_id', b.id, 'agent_id', b.agent_id, 'period', b.period,
                'limit_usd', b.limit_usd, 'limit_tokens', b.limit_tokens,
                'spent_usd', s.spent_usd, 'spent_tokens', s.spent_tokens,
                'task_id', p_task, 'resume_at', runner_webhook_time(resume_at)));
            RETURN NEXT;
            RETURN;
        END IF;
    END LOOP;
    IF p_task IS NOT NULL THEN
        SELECT a.max_cost_usd INTO cap FROM ai_agents a WHERE a.id = p_agent;
        IF cap IS NOT NULL THEN
            SELECT coalesce(sum(c.cost_usd), 0) INTO task_spent
            FROM llm_calls c WHERE c.task_id = p_task;
            IF task_spent + p_cost > cap THEN
                blocked := 'cost_cap';
                message := format(
                    'cost cap reached: the task has spent $%s of its max_cost_usd $%s and '
                    || 'the next call needs about $%s', round(task_spent, 6), cap,
                    round(p_cost, 6));
                RETURN NEXT;
                RETURN;
            END IF;
        END IF;
    END IF;
    DELETE FROM llm_budget_reservations WHERE expires_at <= now();
    INSERT INTO llm_budget_reservations (org_id, agent_id, task_id, execution_id, cost_usd,
                                         tokens, expires_at)
    VALUES (p_org, p_agent, p_task, p_execution, p_cost, p_tokens,
            now() + make_interval(secs => p_ttl))
    RETURNING id INTO reserved;
    reservation_id := reserved;
    RETURN NEXT;
END;
$$;

-- Raising, lowering, deactivating or removing a budget releases the tasks deferred by
-- a budget of that scope at once: due now, with a fresh job (the old one is cancelled).
-- A task still over a budget is deferred again by its first call.
CREATE FUNCTION runner_budget_release_deferred() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    scope llm_budgets := CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
BEGIN
    WITH deferred AS (
        SELECT t.id, t.job_id FROM agent_tasks t
        WHERE t.status = 'pending' AND t.error_message LIKE 'budget reached:%'
          AND t.org_id = scope.org_id
          AND (scope.agent_id IS NULL OR t.agent_id = scope.agent_id)
          AND t.scheduled_for > now()
        FOR UPDATE OF t
    ), old_job AS (
        UPDATE procrastinate_jobs j SET status = 'cancelled'
        FROM deferred d WHERE j.id = d.job_id AND j.status = 'todo'
    )
    UPDATE agent_tasks t
    SET scheduled_for = now(),
        job_id = runner_defer_attempt(t.id, t.priority, now()),
        updated_at = now()
    FROM deferred d WHERE t.id = d.id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER llm_budgets_release_deferred
    AFTER UPDATE OR DELETE ON llm_budgets
    FOR EACH ROW EXECUTE FUNCTION runner_budget_release_deferred();

-- The limiter ----------------------------------------------------------------------------

CREATE TABLE llm_rate_limits (
    model text PRIMARY KEY,
    -- learned from the anthropic-ratelimit-*-limit headers (RUNNER_LLM_* override them)
    requests_limit double precision NULL,
    input_tokens_limit double precision NULL,
    output_tokens_limit double precision NULL,
    -- what is left in each bucket as of refilled_at
    requests_available double precision NULL,
    input_tokens_available double precision NULL,
    output_tokens_available double precision NULL,
    refilled_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    paused_until timestamptz NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Take one call's capacity from the model's buckets: 0 when taken, otherwise the
-- seconds to wait before trying again (nothing taken). A need above a bucket's size is
-- capped to its size, so one big call waits for a full bucket rather than for ever.
-- While no limit is known for a bucket (none set, none learned yet), a take does not
-- wait, but what it takes is remembered as a debt (a negative level; forgotten after a
-- window with no take), so that the first limit learned counts the calls still in
-- flight that the API's first remaining count had not seen. A level is never below
-- empty once the limit is known: a debt costs at most one window.
CREATE FUNCTION runner_llm_take_capacity(
    p_model text, p_rpm double precision, p_itpm double precision, p_otpm double precision,
    p_input double precision, p_output double precision, p_window double precision
) RETURNS double precision
    LANGUAGE plpgsql AS $$
DECLARE
    r llm_rate_limits;
    at timestamptz := clock_timestamp();
    elapsed double precision;
    limits double precision[];
    avail double precision[];
    needs double precision[];
    wait double precision := 0;
    i integer;
BEGIN
    INSERT INTO llm_rate_limits (model) VALUES (p_model) ON CONFLICT (model) DO NOTHING;
    SELECT * INTO r FROM llm_rate_limits WHERE model = p_model FOR UPDATE;
    IF r.paused_until IS NOT NULL AND r.paused_until > at THEN
        RETURN extract(epoch FROM r.paused_until - at);
    END IF;
    elapsed := greatest(0, extract(epoch FROM at - r.refilled_at));
    limits := ARRAY[coalesce(p_rpm, r.requests_limit), coalesce(p_itpm, r.input_tokens_limit),
                    coalesce(p_otpm, r.output_tokens_limit)];
    avail := ARRAY[r.requests_available, r.input_tokens_available, r.output_tokens_available];
    needs := ARRAY[1, p_input, p_output];
    FOR i IN 1..3 LOOP
        IF limits[i] IS NULL OR limits[i] <= 0 THEN
            -- no limit known: the debt of the last window (see above)
            avail[i] := CASE WHEN avail[i] < 0 AND elapsed < p_window THEN avail[i] ELSE 0 END;
            CONTINUE;
        END IF;
        avail[i] := least(limits[i], greatest(0, coalesce(avail[i], limits[i]))
                                     + limits[i] * elapsed / p_window);
        needs[i] := least(needs[i], limits[i]);
        IF avail[i] < needs[i] THEN
            wait := greatest(wait, (needs[i] - avail[i]) * p_window / limits[i]);
        END IF;
    END LOOP;
    IF wait = 0 THEN
        FOR i IN 1..3 LOOP
            avail[i] := avail[i] - needs[i];
        END LOOP;
    END IF;
    UPDATE llm_rate_limits
    SET requests_available = avail[1], input_tokens_available = avail[2],
        output_tokens_available = avail[3], refilled_at = at, updated_at = now()
    WHERE model = p_model;
    RETURN wait;
END;
$$;

-- What a response said, in one locked update of the model's buckets: refill them to
-- now, give back what the call took but did not use (its estimate against the usage the
-- API reported), then let the API's own count of what remains (as of now) cap each
-- level. Learned limits replace earlier ones; limits set in the settings win. (Capping
-- a level as of the last take instead would hand out the refill since then a second
-- time at the next take.)
CREATE FUNCTION runner_llm_learn(
    p_model text, p_rpm double precision, p_itpm double precision, p_otpm double precision,
    p_window double precision,
    p_learned_limits double precision[], p_remaining double precision[],
    p_unused double precision[]
) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    r llm_rate_limits;
    at timestamptz := clock_timestamp();
    elapsed double precision;
    known double precision[];
    learned double precision[];
    limits double precision[];
    avail double precision[];
    i integer;
BEGIN
    INSERT INTO llm_rate_limits (model) VALUES (p_model) ON CONFLICT (model) DO NOTHING;
    SELECT * INTO r FROM llm_rate_limits WHERE model = p_model FOR UPDATE;
    elapsed := greatest(0, extract(epoch FROM at - r.refilled_at));
    known := ARRAY[coalesce(p_rpm, r.requests_limit), coalesce(p_itpm, r.input_tokens_limit),
                   coalesce(p_otpm, r.output_tokens_limit)];
    learned := ARRAY[coalesce(p_learned_limits[1], r.requests_limit),
                     coalesce(p_learned_limits[2], r.input_tokens_limit),
                     coalesce(p_learned_limits[3], r.output_tokens_limit)];
    limits := ARRAY[coalesce(p_rpm, learned[1]), coalesce(p_itpm, learned[2]),
                    coalesce(p_otpm, learned[3])];
    avail := ARRAY[r.requests_available, r.input_tokens_available, r.output_tokens_available];
    FOR i IN 1..3 LOOP
        IF limits[i] IS NULL OR limits[i] <= 0 THEN
            CONTINUE;  -- still unknown: the debt stays as it is
        END IF;
        IF known[i] IS NULL OR known[i] <= 0 THEN
            -- learned just now: a full bucket less what was sent while it was unknown
            avail[i] := greatest(0, limits[i] + least(coalesce(avail[i], 0), 0));
        ELSE
            avail[i] := least(limits[i], greatest(0, coalesce(avail[i], limits[i]))
                                         + limits[i] * elapsed / p_window);
        END IF;
        avail[i] := least(limits[i], avail[i] + greatest(coalesce(p_unused[i], 0), 0));
        IF p_remaining[i] IS NOT NULL THEN
            avail[i] := least(avail[i], p_remaining[i]);
        END IF;
    END LOOP;
    UPDATE llm_rate_limits
    SET requests_limit = learned[1], input_tokens_limit = learned[2],
        output_tokens_limit = learned[3],
        requests_available = avail[1], input_tokens_available = avail[2],
        output_tokens_available = avail[3], refilled_at = at, updated_at = now()
    WHERE model = p_model;
END;
$$;

