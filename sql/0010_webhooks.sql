-- Webhooks (CONTRACT.md, "Notifications: webhooks"): the endpoints, an outbox written in
-- the transaction that causes each event, and one row per delivery attempt.
--
-- How an event travels:
--   1. A trigger below (a task finished, a run finished, a stream item newly critical),
--      or a caller of runner_webhook_emit() (budget.reached, a later migration), writes
--      one webhook_events row, and one pending webhook_deliveries row (attempt 1) per
--      active endpoint of the organization subscribed to the event, in the transaction
--      that causes the event: a rollback leaves no event, a commit always leaves one.
--      With no endpoint subscribed nothing is written, after one EXISTS on a tiny table.
--   2. Any daemon claims due attempts (runner_webhook_claim: FOR UPDATE SKIP LOCKED, and
--      a lease with a visible expiry, not a transaction held across the HTTP call),
--      POSTs them (runner/webhooks.py) and records the outcome (runner_webhook_finish,
--      fenced on the lease token). A failed attempt is followed by a new pending row,
--      attempt + 1, due after the daemon's backoff; an event is given up only once it
--      has been retried for the whole retry window (24 h), so the last attempt comes
--      at least that long after the event.
--   3. An attempt whose lease expired (its daemon was killed or lost the database
--      mid-delivery) is recorded as failed by the next claim, and attempted again.
-- Every attempt of an event carries the event's webhook_id (the webhook-id header).

-- The event vocabulary endpoints subscribe to (CONTRACT.md). 'webhook.test' is sent
-- only by `agent-runner webhooks test` and cannot be subscribed to.
CREATE FUNCTION runner_webhook_event_types() RETURNS text[]
    LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY['task.completed', 'task.failed', 'run.completed', 'run.failed',
                 'lead.critical', 'budget.reached']
$$;

-- What is wrong with a webhook URL, or NULL. Only what the URL itself says: its form,
-- 'localhost', and literal addresses (the shorthand IPv4 forms resolvers accept, like
-- 127.1 or 2130706433, are refused outright). A problem starting 'names ' is a
-- non-public address, which allow_private permits. Names are resolved, and every
-- address checked in full, at each delivery (runner/webhooks.py, runner/addresses.py).
CREATE FUNCTION runner_webhook_url_problem(p_url text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    host text;
    address inet;
    range record;
BEGIN
    IF p_url IS NULL OR p_url !~* '^https?://' THEN
        RETURN 'must be an http:// or https:// URL';
    END IF;
    IF length(p_url) > 2048 THEN
        RETURN 'is longer than 2048 characters';
    END IF;
    host := lower(substring(p_url FROM '^[A-Za-z]+://(?:[^@/?#]*@)?(\[[^]/?#]*\]|[^:/?#]*)'));
    host := rtrim(coalesce(host, ''), '.');
    IF host = '' THEN
        RETURN 'has no host';
    END IF;
    IF host = 'localhost' OR host LIKE '%.localhost' THEN
        RETURN 'names localhost (a loopback address)';
    END IF;
    IF host LIKE '[%]' THEN
        host := substr(host, 2, length(host) - 2);
        IF host LIKE '%\%%' THEN
            RETURN 'names an IPv6 address with a zone (a link-local address)';
        END IF;
    ELSIF host ~ '^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+))*$'
          AND host !~ '^[0-9]{1,3}(\.[0-9]{1,3}){3}$' THEN
        RETURN 'writes an IPv4 address in a shorthand form; write it as a.b.c.d';
    ELSIF host !~ '^[0-9]{1,3}(\.[0-9]{1,3}){3}$' THEN
        RETURN NULL;  -- a name: checked when it is resolved, at each delivery
    END IF;
    BEGIN
        address := host::inet;
    EXCEPTION WHEN invalid_text_representation THEN
        RETURN 'holds an invalid IP address';
    END;
    FOR range IN
        SELECT r.network::inet AS network, r.reason
        FROM (VALUES
            ('0.0.0.0/8', 'an unspecified ("this network") address'),
            ('10.0.0.0/8', 'a private address'),
            ('100.64.0.0/10', 'a shared (carrier-grade NAT) address'),
            ('127.0.0.0/8', 'a loopback address'),
            ('169.254.0.0/16', 'a link-local address'),
            ('172.16.0.0/12', 'a private address'),
            ('192.0.0.0/24', 'a reserved (IETF protocol) address'),
            ('192.0.2.0/24', 'a documentation address'),
            ('192.168.0.0/16', 'a private address'),
            ('198.18.0.0/15', 'a benchmarking address'),
            ('198.51.100.0/24', 'a documentation address'),
            ('203.0.113.0/24', 'a documentation address'),
            ('224.0.0.0/4', 'a multicast address'),
            ('240.0.0.0/4', 'a reserved address'),
            ('::/128', 'an unspecified address'),
            ('::1/128', 'a loopback address'),
            ('::ffff:0:0/96', 'an IPv4-mapped address'),
            ('::/96', 'an IPv4-compatible address'),
            ('64:ff9b:1::/48', 'a local-use NAT64 address'),
            ('100::/64', 'a discard-only address'),
            ('2001:db8::/32', 'a documentation address'),
            ('fc00::/7', 'a unique local (private) address'),
            ('fe80::/10', 'a link-local address'),
            ('fec0::/10', 'a site-local address'),
            ('ff00::/8', 'a multicast address')
        ) AS r (network, reason)
    LOOP
        IF address <<= range.network THEN
            RETURN 'names ' || range.reason;
        END IF;
    END LOOP;
    RETURN NULL;
END;
$$;

-- A fresh secret in the Standard Webhooks form: 'whsec_' + base64 of 32 random bytes
-- (from two v4 UUIDs: 244 random bits; pgcrypto is not assumed to be installed).
CREATE FUNCTION runner_webhook_new_secret() RETURNS text
    LANGUAGE sql VOLATILE AS $$
    SELECT 'whsec_' || encode(decode(replace(gen_random_uuid()::text || gen_random_uuid()::text,
                                             '-', ''), 'hex'), 'base64')
$$;

CREATE TABLE webhook_endpoints (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL DEFAULT runner_default_org_id() REFERENCES organizations (id),
    url text NOT NULL,
    -- 'whsec_' + base64 of 24 to 64 random bytes (Standard Webhooks)
    secret text NOT NULL DEFAULT runner_webhook_new_secret(),
    events text[] NOT NULL,
    is_active boolean NOT NULL DEFAULT true,
    -- deliver to private, loopback and other non-public addresses (a receiver on the
    -- same host or network); refused otherwise, on write and at every delivery
    allow_private boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX webhook_endpoints_org_active_idx ON webhook_endpoints (org_id) WHERE is_active;

-- One trigger rather than CHECK constraints, so that every refusal says what to fix.
CREATE FUNCTION runner_webhook_endpoints_check() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    problem text;
    unknown text[];
    key_bytes integer;
BEGIN
    problem := runner_webhook_url_problem(NEW.url);
    IF problem IS NOT NULL AND problem NOT LIKE 'names %' THEN
        RAISE EXCEPTION 'webhook url % %', quote_literal(NEW.url), problem
            USING ERRCODE = 'check_violation';
    ELSIF problem IS NOT NULL AND NOT NEW.allow_private THEN
        RAISE EXCEPTION 'webhook url % %', quote_literal(NEW.url), problem
            USING ERRCODE = 'check_violation',
                  HINT = 'set allow_private to deliver to a private or loopback address';
    END IF;
    IF NEW.events IS NULL OR cardinality(NEW.events) = 0 THEN
        RAISE EXCEPTION 'a webhook endpoint needs at least one event; known events: %',
            array_to_string(runner_webhook_event_types(), ', ')
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT array_agg(e) INTO unknown
    FROM unnest(NEW.events) e WHERE e IS NULL OR NOT e = ANY (runner_webhook_event_types());
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'unknown webhook event(s) %; known events: %',
            array_to_string(unknown, ', ', 'NULL'),
            array_to_string(runner_webhook_event_types(), ', ')
            USING ERRCODE = 'check_violation';
    END IF;
    NEW.events := ARRAY(SELECT DISTINCT e FROM unnest(NEW.events) e ORDER BY e);
    IF NEW.secret IS NULL OR NEW.secret !~ '^whsec_[A-Za-z0-9+/]+={0,2}$'
       OR length(NEW.secret) % 4 <> 2 THEN
        RAISE EXCEPTION 'a webhook secret must be ''whsec_'' followed by base64'
            USING ERRCODE = 'check_violation';
    END IF;
    key_bytes := length(decode(substr(NEW.secret, 7), 'base64'));
    IF key_bytes NOT BETWEEN 24 AND 64 THEN
        RAISE EXCEPTION 'a webhook secret must hold 24 to 64 bytes (it holds %)', key_bytes
            USING ERRCODE = 'check_violation';
    END IF;
    IF TG_OP = 'UPDATE' THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER webhook_endpoints_check BEFORE INSERT OR UPDATE ON webhook_endpoints
    FOR EACH ROW EXECUTE FUNCTION runner_webhook_endpoints_check();

-- The outbox: one row per event, whatever the number of endpoints. payload is the
-- body's "data"; the body is {"type": event_type, "timestamp": created_at, "data":
-- payload}, rebuilt identically for every attempt.
CREATE TABLE webhook_events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES organizations (id),
    event_type text NOT NULL,
    -- the Standard Webhooks message id (header webhook-id), the same on every attempt
    webhook_id text NOT NULL UNIQUE DEFAULT 'msg_' || replace(gen_random_uuid()::text, '-', ''),
    payload jsonb NOT NULL CHECK (jsonb_typeof(payload) = 'object'),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX webhook_events_created_idx ON webhook_events (created_at);

-- One row per attempt to deliver one event to one endpoint.
--   pending     due at scheduled_for, not yet attempted
--   delivering  claimed: a daemon is attempting it until locked_until (the lease)
--   succeeded   the endpoint answered 2xx (delivered_at)
--   failed      this attempt failed (error, response_status); attempt + 1 follows
--   gave_up     this attempt failed and the event was retried for the whole window
CREATE TABLE webhook_deliveries (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id bigint NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
    endpoint_id uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_type text NOT NULL,
    webhook_id text NOT NULL,
    attempt integer NOT NULL CHECK (attempt >= 1),
    status text NOT NULL DEFAULT 'pending' CHECK (status IN (
        'pending', 'delivering', 'succeeded', 'failed', 'gave_up')),
    response_status integer NULL,
    error text NULL,
    scheduled_for timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz NULL,
    finished_at timestamptz NULL,
    -- the lease of the daemon attempting it (status 'delivering' only)
    locked_until timestamptz NULL,
    lease_token uuid NULL,
    claimed_by text NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz NULL,
    CONSTRAINT webhook_deliveries_one_row_per_attempt UNIQUE (event_id, endpoint_id, attempt),
    CONSTRAINT webhook_deliveries_lease CHECK (
        (status = 'delivering') = (locked_until IS NOT NULL AND lease_token IS NOT NULL))
);

-- At most one attempt of an event to an endpoint is open at a time.
CREATE UNIQUE INDEX webhook_deliveries_one_open
    ON webhook_deliveries (event_id, endpoint_id) WHERE status IN ('pending', 'delivering');
CREATE INDEX webhook_deliveries_due_idx
    ON webhook_deliveries (scheduled_for) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_leased_idx
    ON webhook_deliveries (locked_until) WHERE status = 'delivering';
CREATE INDEX webhook_deliveries_endpoint_idx ON webhook_deliveries (endpoint_id, id DESC);

-- Whether some active endpoint of the organization wants the event: the cheap test
-- every trigger makes before it builds a payload.
CREATE FUNCTION runner_webhook_wanted(p_org uuid, p_event_type text) RETURNS boolean
    LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM webhook_endpoints e
                   WHERE e.org_id = p_org AND e.is_active AND p_event_type = ANY (e.events))
$$;

-- Write one event into the outbox, with its first attempt for every active endpoint
-- of the organization that subscribes to it; NULL (and nothing written) when none
-- does. Call it in the transaction that causes the event.
CREATE FUNCTION runner_webhook_emit(p_org uuid, p_event_type text, p_data jsonb)
    RETURNS bigint
    LANGUAGE plpgsql AS $$
DECLARE
    event webhook_events%ROWTYPE;
BEGIN
    IF p_event_type IS NULL OR NOT p_event_type = ANY (runner_webhook_event_types()) THEN
        RAISE EXCEPTION 'unknown webhook event %; known events: %', quote_nullable(p_event_type),
            array_to_string(runner_webhook_event_types(), ', ')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT runner_webhook_wanted(p_org, p_event_type) THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_events (org_id, event_type, payload)
    VALUES (p_org, p_event_type, coalesce(p_data, '{}'))
    RETURNING * INTO event;
    INSERT INTO webhook_deliveries (event_id, endpoint_id, event_type, webhook_id, attempt)
    SELECT event.id, e.id, event.event_type, event.webhook_id, 1
    FROM webhook_endpoints e
    WHERE e.org_id = p_org AND e.is_active AND p_event_type = ANY (e.events);
    -- Delivered on commit, once per transaction however many events it wrote.
    PERFORM pg_notify('agent_runner_webhooks', '');
    RETURN event.id;
END;
$$;

-- The body's timestamps: RFC 3339 in UTC, as the rest of the body's times.
CREATE FUNCTION runner_webhook_time(p_at timestamptz) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$
    SELECT to_char(p_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

-- The events --------------------------------------------------------------------------

-- task.completed / task.failed: a task reached its end state ('failed' = for good; a
-- retry goes back to pending and sends nothing). The output is included up to 64 KiB.
CREATE FUNCTION runner_webhook_task_finished() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    event_type text := 'task.' || NEW.status;
BEGIN
    IF NOT runner_webhook_wanted(NEW.org_id, event_type) THEN
        RETURN NULL;
    END IF;
    PERFORM runner_webhook_emit(NEW.org_id, event_type, jsonb_build_object(
        'task_id', NEW.id,
        'agent_id', NEW.agent_id,
        'agent_name', (SELECT a.name FROM ai_agents a WHERE a.id = NEW.agent_id),
        'agent_type', NEW.task_type,
        'status', NEW.status,
        'trigger', NEW.trigger,
        'workflow_run_id', NEW.workflow_run_id,
        'retry_count', NEW.retry_count,
        'error_message', NEW.error_message,
        'created_at', runner_webhook_time(NEW.created_at),
        'completed_at', runner_webhook_time(NEW.completed_at),
        'output', CASE WHEN octet_length(NEW.output::text) <= 65536 THEN NEW.output END,
        'output_truncated', coalesce(octet_length(NEW.output::text) > 65536, false)));
    RETURN NULL;
END;
$$;

CREATE TRIGGER agent_tasks_webhook AFTER UPDATE OF status ON agent_tasks
    FOR EACH ROW
    WHEN (NEW.status IS DISTINCT FROM OLD.status AND NEW.status IN ('completed', 'failed'))
    EXECUTE FUNCTION runner_webhook_task_finished();

-- run.completed / run.failed: a workflow run changed to that status (a run that failed
-- and later completes, after a retry, sends both).
CREATE FUNCTION runner_webhook_run_finished() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    event_type text := 'run.' || NEW.status;
BEGIN
    IF NOT runner_webhook_wanted(NEW.org_id, event_type) THEN
        RETURN NULL;
    END IF;
    PERFORM runner_webhook_emit(NEW.org_id, event_type, jsonb_build_object(
        'workflow_run_id', NEW.id,
        'stream_id', NEW.stream_id,
        'stream_name', (SELECT s.name FROM streams s WHERE s.id = NEW.stream_id),
        'trigger', NEW.trigger,
        'status', NEW.status,
        'error_message', NEW.error_message,
        'created_at', runner_webhook_time(NEW.created_at),
        'completed_at', runner_webhook_time(NEW.completed_at),
        'steps', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                             'agent_id', st.agent_id, 'agent_name', a.name,
                             'step_status', st.status, 'task_id', st.task_id,
                             'task_status', t.status, 'reason', st.reason)
                         ORDER BY st.execution_order, a.name), '[]')
                  FROM workflow_run_steps st
                  JOIN ai_agents a ON a.id = st.agent_id
                  LEFT JOIN agent_tasks t ON t.id = st.task_id
                  WHERE st.workflow_run_id = NEW.id)));
    RETURN NULL;
END;
$$;

CREATE TRIGGER workflow_runs_webhook AFTER UPDATE OF status ON workflow_runs
    FOR EACH ROW
    WHEN (NEW.status IS DISTINCT FROM OLD.status AND NEW.status IN ('completed', 'failed'))
    EXECUTE FUNCTION runner_webhook_run_finished();

-- lead.critical: a stream item newly scored critical (added as critical, or its
-- priority changed to critical). Scoring rewrites every item; the WHEN clauses keep
-- the others from calling any function.
CREATE FUNCTION runner_webhook_lead_critical() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF NOT runner_webhook_wanted(NEW.org_id, 'lead.critical') THEN
        RETURN NULL;
    END IF;
    PERFORM runner_webhook_emit(NEW.org_id, 'lead.critical', (
        SELECT jsonb_build_object(
            'stream_item_id', NEW.id,
            'stream_id', NEW.stream_id,
            'stream_name', s.name,
            'company_id', NEW.company_id,
            'company_number', c.company_number,
            'company_name', c.name,
            'priority', NEW.priority,
            'previous_priority', CASE WHEN TG_OP = 'UPDATE' THEN OLD.priority END,
            'quality_score', NEW.quality_score,
            'position', NEW.position,
            'qualified', NEW.qualified,
            'score_details', NEW.score_details,
            'buying_signals', NEW.buying_signals,
            'scored_at', runner_webhook_time(NEW.scored_at))
        FROM streams s, companies c
        WHERE s.id = NEW.stream_id AND c.id = NEW.company_id));
    RETURN NULL;
END;
$$;

CREATE TRIGGER stream_items_webhook_insert AFTER INSERT ON stream_items
    FOR EACH ROW WHEN (NEW.priority = 'critical')
    EXECUTE FUNCTION runner_webhook_lead_critical();
CREATE TRIGGER stream_items_webhook_update AFTER UPDATE OF priority ON stream_items
    FOR EACH ROW WHEN (NEW.priority = 'critical' AND OLD.priority IS DISTINCT FROM 'critical')
    EXECUTE FUNCTION runner_webhook_lead_critical();

-- Delivery ----------------------------------------------------------------------------

-- A failed attempt (locked by the caller): recorded, and followed by the next attempt
-- after p_delay seconds unless the event has been retried for the whole window.
-- Returns the attempt's new status: 'failed' or 'gave_up'.
CREATE FUNCTION runner_webhook_record_failure(
    p_delivery_id bigint, p_response_status integer, p_error text,
    p_delay double precision, p_window double precision
) RETURNS text
    LANGUAGE plpgsql AS $$
DECLARE
    d webhook_deliveries%ROWTYPE;
    event_at timestamptz;
    new_status text;
BEGIN
    SELECT * INTO d FROM webhook_deliveries WHERE id = p_delivery_id;
    SELECT created_at INTO event_at FROM webhook_events WHERE id = d.event_id;
    new_status := CASE WHEN now() - event_at >= make_interval(secs => p_window)
                       THEN 'gave_up' ELSE 'failed' END;
    UPDATE webhook_deliveries
    SET status = new_status, response_status = p_response_status,
        error = left(coalesce(p_error, 'failed'), 2000), finished_at = now(),
        locked_until = NULL, lease_token = NULL
    WHERE id = p_delivery_id;
    IF new_status = 'failed' THEN
        INSERT INTO webhook_deliveries (event_id, endpoint_id, event_type, webhook_id, attempt,
                                        scheduled_for)
        VALUES (d.event_id, d.endpoint_id, d.event_type, d.webhook_id, d.attempt + 1,
                now() + make_interval(secs => greatest(p_delay, 0)));
        PERFORM pg_notify('agent_runner_webhooks', '');
    END IF;
    RETURN new_status;
END;
$$;

-- Claim up to p_limit due attempts for p_lease seconds. First, attempts whose lease
-- ran out are recorded as failed and followed by a new attempt due at once. Returns
-- what a delivery needs: the endpoint, the event and the lease token that fences the
-- finish.
CREATE FUNCTION runner_webhook_claim(
    p_limit integer, p_lease double precision, p_claimer text, p_window double precision
) RETURNS TABLE (
    delivery_id bigint, lease_token uuid, endpoint_id uuid, url text, secret text,
    allow_private boolean, event_type text, webhook_id text, attempt integer,
    event_created_at timestamptz, payload jsonb
)
    LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    token uuid := gen_random_uuid();
    expired record;
BEGIN
    FOR expired IN
        SELECT d.id, d.claimed_by FROM webhook_deliveries d
        WHERE d.status = 'delivering' AND d.locked_until < now()
        ORDER BY d.locked_until
        LIMIT greatest(p_limit, 1)
        FOR UPDATE SKIP LOCKED
    LOOP
        PERFORM runner_webhook_record_failure(
            expired.id, NULL,
            format('no outcome recorded before the lease expired (%s stopped or lost the '
                   'database mid-delivery)', coalesce(expired.claimed_by, 'its daemon')),
            0, p_window);
    END LOOP;
    IF p_limit < 1 THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH due AS (
        SELECT d.id FROM webhook_deliveries d
        JOIN webhook_endpoints e ON e.id = d.endpoint_id
        WHERE d.status = 'pending' AND d.scheduled_for <= now() AND e.is_active
        ORDER BY d.scheduled_for, d.id
        LIMIT p_limit
        FOR UPDATE OF d SKIP LOCKED
    ), claimed AS (
        UPDATE webhook_deliveries d
        SET status = 'delivering', lease_token = token, claimed_by = p_claimer,
            started_at = now(), locked_until = now() + make_interval(secs => p_lease)
        FROM due WHERE d.id = due.id
        RETURNING d.*
    )
    SELECT c.id, c.lease_token, c.endpoint_id, e.url, e.secret, e.allow_private,
           c.event_type, c.webhook_id, c.attempt, ev.created_at, ev.payload
    FROM claimed c
    JOIN webhook_endpoints e ON e.id = c.endpoint_id
    JOIN webhook_events ev ON ev.id = c.event_id
    ORDER BY c.id;
END;
$$;

-- Record a claimed attempt's outcome, only if the claim is still ours (fenced on the
-- lease token: a daemon whose lease expired meanwhile writes nothing). Returns the
-- attempt's status ('succeeded', 'failed', 'gave_up'), or 'fenced'.
CREATE FUNCTION runner_webhook_finish(
    p_delivery_id bigint, p_lease_token uuid, p_succeeded boolean, p_response_status integer,
    p_error text, p_retry_delay double precision, p_window double precision
) RETURNS text
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM webhook_deliveries
    WHERE id = p_delivery_id AND status = 'delivering' AND lease_token = p_lease_token
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'fenced';
    END IF;
    IF p_succeeded THEN
        UPDATE webhook_deliveries
        SET status = 'succeeded', response_status = p_response_status, error = NULL,
            finished_at = now(), delivered_at = now(), locked_until = NULL, lease_token = NULL
        WHERE id = p_delivery_id;
        RETURN 'succeeded';
    END IF;
    RETURN runner_webhook_record_failure(p_delivery_id, p_response_status, p_error,
                                         p_retry_delay, p_window);
END;
$$;

-- Hand a claimed attempt back unattempted (the daemon is stopping): pending again, due
-- at once, the same attempt number. Fenced like the finish.
CREATE FUNCTION runner_webhook_release(p_delivery_id bigint, p_lease_token uuid)
    RETURNS boolean
    LANGUAGE plpgsql AS $$
BEGIN
    UPDATE webhook_deliveries
    SET status = 'pending', scheduled_for = now(), started_at = NULL, claimed_by = NULL,
        locked_until = NULL, lease_token = NULL
    WHERE id = p_delivery_id AND status = 'delivering' AND lease_token = p_lease_token;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM pg_notify('agent_runner_webhooks', '');
    RETURN true;
END;
$$;

-- `agent-runner webhooks test`: a 'webhook.test' event for one endpoint (active or
-- not, whatever it subscribes to), its single attempt already claimed by the caller.
CREATE FUNCTION runner_webhook_test(p_endpoint_id uuid, p_lease double precision, p_claimer text)
    RETURNS TABLE (
        delivery_id bigint, lease_token uuid, endpoint_id uuid, url text, secret text,
        allow_private boolean, event_type text, webhook_id text, attempt integer,
        event_created_at timestamptz, payload jsonb
    )
    LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    ep webhook_endpoints%ROWTYPE;
    ev webhook_events%ROWTYPE;
    d webhook_deliveries%ROWTYPE;
BEGIN
    SELECT * INTO ep FROM webhook_endpoints WHERE id = p_endpoint_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    INSERT INTO webhook_events (org_id, event_type, payload)
    VALUES (ep.org_id, 'webhook.test', jsonb_build_object(
        'endpoint_id', ep.id,
        'message', 'a test event sent by `agent-runner webhooks test`'))
    RETURNING * INTO ev;
    INSERT INTO webhook_deliveries (event_id, endpoint_id, event_type, webhook_id, attempt,
                                    status, started_at, claimed_by, lease_token, locked_until)
    VALUES (ev.id, ep.id, ev.event_type, ev.webhook_id, 1, 'delivering', now(),
            p_claimer, gen_random_uuid(), now() + make_interval(secs => p_lease))
    RETURNING * INTO d;
    RETURN QUERY SELECT d.id, d.lease_token, ep.id, ep.url, ep.secret,
                        ep.allow_private, ev.event_type, ev.webhook_id, 1,
                        ev.created_at, ev.payload;
END;
$$;
