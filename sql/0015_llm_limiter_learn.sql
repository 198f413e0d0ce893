-- The provider limiter, made exact (issue 12's benchmark).
--
-- 1. While no limit is known for a bucket (none set, none learned yet), a take does not
--    wait, but what it takes is remembered as a debt (a negative level; forgotten after a
--    window with no take), so that the first limit learned counts the calls still in
--    flight that the API's first remaining count had not seen yet. A level is never
--    below empty once the limit is known: a debt costs at most one window.
-- 2. runner_llm_learn: what a response said, in one locked update of the model's
--    buckets: refill them to now, give back what the call took but did not use (its
--    estimate against the usage the API reported), then let the API's own count of what
--    remains (as of now) cap each level. Learned limits replace earlier ones; limits set
--    in the settings win. (Capping a level as of the last take instead would hand out
--    the refill since then a second time at the next take.)

CREATE OR REPLACE FUNCTION runner_llm_take_capacity(
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
