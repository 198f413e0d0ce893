-- Learn what a response said of a model's limits, in one locked update of its buckets:
-- refill them to now, give back what the call took but did not use (its estimate against
-- the usage the API reported), then let the API's own count of what remains (as of now)
-- cap each level. Learned limits replace earlier ones; limits set in the settings win.
-- (Capping a level as of the last take instead would hand out the refill since then a
-- second time at the next take.)
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
    learned double precision[];
    limits double precision[];
    avail double precision[];
    i integer;
BEGIN
    INSERT INTO llm_rate_limits (model) VALUES (p_model) ON CONFLICT (model) DO NOTHING;
    SELECT * INTO r FROM llm_rate_limits WHERE model = p_model FOR UPDATE;
    elapsed := greatest(0, extract(epoch FROM at - r.refilled_at));
    learned := ARRAY[coalesce(p_learned_limits[1], r.requests_limit),
                     coalesce(p_learned_limits[2], r.input_tokens_limit),
                     coalesce(p_learned_limits[3], r.output_tokens_limit)];
    limits := ARRAY[coalesce(p_rpm, learned[1]), coalesce(p_itpm, learned[2]),
                    coalesce(p_otpm, learned[3])];
    avail := ARRAY[r.requests_available, r.input_tokens_available, r.output_tokens_available];
    FOR i IN 1..3 LOOP
        IF limits[i] IS NULL OR limits[i] <= 0 THEN
            avail[i] := NULL;
            CONTINUE;
        END IF;
        avail[i] := least(limits[i], coalesce(avail[i], limits[i]) + limits[i] * elapsed / p_window
                                     + greatest(coalesce(p_unused[i], 0), 0));
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
