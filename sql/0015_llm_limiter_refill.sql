-- Refill a model's buckets to now without taking anything. Learning the API's view of
-- its limits (anthropic-ratelimit-*-remaining) caps the levels; capping a level as of the
-- last take would hand out the refill since then a second time at the next take.
CREATE FUNCTION runner_llm_refill(
    p_model text, p_rpm double precision, p_itpm double precision, p_otpm double precision,
    p_window double precision
) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    r llm_rate_limits;
    at timestamptz := clock_timestamp();
    elapsed double precision;
    limits double precision[];
    avail double precision[];
    i integer;
BEGIN
    INSERT INTO llm_rate_limits (model) VALUES (p_model) ON CONFLICT (model) DO NOTHING;
    SELECT * INTO r FROM llm_rate_limits WHERE model = p_model FOR UPDATE;
    elapsed := greatest(0, extract(epoch FROM at - r.refilled_at));
    limits := ARRAY[coalesce(p_rpm, r.requests_limit), coalesce(p_itpm, r.input_tokens_limit),
                    coalesce(p_otpm, r.output_tokens_limit)];
    avail := ARRAY[r.requests_available, r.input_tokens_available, r.output_tokens_available];
    FOR i IN 1..3 LOOP
        IF limits[i] IS NULL OR limits[i] <= 0 OR avail[i] IS NULL THEN
            CONTINUE;
        END IF;
        avail[i] := least(limits[i], avail[i] + limits[i] * elapsed / p_window);
    END LOOP;
    UPDATE llm_rate_limits
    SET requests_available = avail[1], input_tokens_available = avail[2],
        output_tokens_available = avail[3], refilled_at = at, updated_at = now()
    WHERE model = p_model;
END;
$$;
