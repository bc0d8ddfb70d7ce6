-- Vendor API capacity: requests per window, tokens per window and concurrent
-- calls per provider/endpoint, shared by every worker, leak-proof.
--
-- Algorithm: an exact sliding log ("incremental sliding window log").
--   * Every grant is a row of api_capacity_ledger (granted_at, tokens). A call
--     is granted only if the grants in the half-open window
--     (granted_at - window_seconds, granted_at] -- itself included -- stay
--     within requests_per_minute and tokens_per_minute. That implies the
--     limits hold in EVERY window of that length, not only calendar minutes.
--   * Decisions for one provider/endpoint are serialised by a transaction
--     advisory lock (730603, limit id). The lock holder keeps running totals
--     of the window on the limits row and evicts grants that slid out of it,
--     so a decision costs O(evicted rows), not O(window).
--   * Concurrency is the number of live holds (api_capacity_holds). A hold
--     dies when released, when its lease (expires_at) passes, or -- for a
--     hold tied to a job -- when that job is no longer processing under the
--     same lease token. Job-tied holds are kept alive by the job heartbeat
--     (heartbeat_at + hold_seconds) or extend_api_capacity().
--   * Refusals never write to the limits row: they are counted in
--     api_capacity_refusals, one of 16 random shards per minute and reason.
--   * window_seconds is 60 in production; tests shorten it.
-- Call these functions in their own short transaction (autocommit): the
-- advisory lock is held until the caller's transaction ends.

-- +goose Up

CREATE TABLE public.api_rate_limits (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  provider_name text NOT NULL CHECK (provider_name ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
  api_endpoint text NOT NULL CHECK (api_endpoint ~ '^[a-z0-9][a-z0-9._-]{0,126}$'),
  requests_per_minute integer NOT NULL CHECK (requests_per_minute > 0),
  tokens_per_minute integer CHECK (tokens_per_minute IS NULL OR tokens_per_minute > 0),
  concurrent_requests integer NOT NULL CHECK (concurrent_requests > 0),
  window_seconds integer NOT NULL DEFAULT 60 CHECK (window_seconds BETWEEN 1 AND 3600),
  status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled', 'maintenance')),
  -- vendor pushback (HTTP 429): nobody calls this provider/endpoint before then
  blocked_until timestamptz,
  blocked_at timestamptz,
  -- sliding-window state, written only under the advisory lock by a grant
  window_requests integer NOT NULL DEFAULT 0,
  window_tokens bigint NOT NULL DEFAULT 0,
  window_evicted_through timestamptz NOT NULL DEFAULT '-infinity',
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  updated_by text,
  UNIQUE (provider_name, api_endpoint)
);
COMMENT ON TABLE public.api_rate_limits IS
  'Vendor limits per provider/endpoint (per window_seconds, 60 unless shortened for tests) and their sliding-window state.';

-- In-flight calls. A row exists from grant until release (or until a later
-- acquire, the job hook or a reset finds it dead and removes it).
CREATE TABLE public.api_capacity_holds (
  id uuid PRIMARY KEY,
  limit_id bigint NOT NULL REFERENCES public.api_rate_limits(id) ON DELETE CASCADE,
  tokens_estimated integer NOT NULL CHECK (tokens_estimated >= 0),
  job_id uuid,
  lease_token uuid,
  hold_seconds integer NOT NULL CHECK (hold_seconds > 0),
  acquired_at timestamptz NOT NULL,
  expires_at timestamptz NOT NULL
);
CREATE INDEX api_capacity_holds_limit_idx ON public.api_capacity_holds (limit_id, acquired_at);
CREATE INDEX api_capacity_holds_job_idx ON public.api_capacity_holds (job_id) WHERE job_id IS NOT NULL;

-- The grant log (window ledger): one row per grant, id = the hold id. tokens
-- is what the window is charged: the estimate, replaced by the actual count
-- on release. Rows older than the window plus an hour are purged.
CREATE TABLE public.api_capacity_ledger (
  id uuid PRIMARY KEY,
  limit_id bigint NOT NULL REFERENCES public.api_rate_limits(id) ON DELETE CASCADE,
  granted_at timestamptz NOT NULL,
  tokens integer NOT NULL CHECK (tokens >= 0),
  tokens_estimated integer NOT NULL CHECK (tokens_estimated >= 0),
  tokens_actual integer CHECK (tokens_actual >= 0),
  job_id uuid,
  released_at timestamptz,
  release_reason text CHECK (release_reason IN ('released', 'expired', 'lease_lost', 'job_finished', 'reset'))
);
CREATE INDEX api_capacity_ledger_window_idx ON public.api_capacity_ledger (limit_id, granted_at);

-- Refusals and vendor 429 reports, sharded so that a refusal storm spreads
-- over many rows: (limit, minute, reason, random shard 0..15). No foreign key,
-- so a refusal never locks the limits row; rows older than a day are purged.
CREATE TABLE public.api_capacity_refusals (
  limit_id bigint NOT NULL,
  minute timestamptz NOT NULL,
  reason text NOT NULL,
  shard smallint NOT NULL CHECK (shard BETWEEN 0 AND 15),
  refusals bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (limit_id, minute, reason, shard)
);

ALTER TABLE public.api_rate_limits ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.api_capacity_holds ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.api_capacity_ledger ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.api_capacity_refusals ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.api_rate_limits, public.api_capacity_holds, public.api_capacity_ledger,
              public.api_capacity_refusals FROM PUBLIC, anon, authenticated;
GRANT ALL ON public.api_rate_limits, public.api_capacity_holds, public.api_capacity_ledger,
             public.api_capacity_refusals TO service_role;

INSERT INTO public.api_rate_limits (provider_name, api_endpoint, requests_per_minute, tokens_per_minute, concurrent_requests)
VALUES ('openai', 'gpt-4o-mini', 500, 200000, 50),
       ('openai', 'gpt-4-vision', 100, 20000, 20),
       ('google', 'vision-api', 1800, NULL, 100),
       ('anthropic', 'claude-3', 400, 100000, 25);

INSERT INTO public.system_configuration
  (config_key, config_value, default_value, config_type, value_kind, min_value, max_value, requires_restart, description)
VALUES
  ('ratelimit.hold_seconds', '300', '300', 'integration', 'integer', 1, 86400, false,
   'Lease of a vendor capacity hold: a crashed caller''s capacity returns after at most this long (job-tied holds are renewed by the job heartbeat).'),
  ('ratelimit.concurrency_retry_after_ms', '1000', '1000', 'integration', 'integer', 1, 600000, false,
   'Retry-after suggested to a caller refused because every concurrent slot is taken.'),
  ('ratelimit.max_wait_seconds', '10', '10', 'integration', 'integer', 0, 600, false,
   'A worker refused vendor capacity waits up to this long for it; beyond that it reschedules the job (no attempt consumed). 0 = always reschedule.'),
  ('ratelimit.default_pushback_seconds', '60', '60', 'integration', 'integer', 1, 86400, false,
   'How long a vendor 429 without a retry-after header blocks the provider/endpoint for every worker.');

-- ---------------------------------------------------------------------------
-- Internal helpers (no grants: called only from the functions below)
-- ---------------------------------------------------------------------------

-- The configuration of one limit as JSON (for results and audit rows).
-- +goose StatementBegin
CREATE FUNCTION public.api_rate_limit_json(l public.api_rate_limits) RETURNS jsonb
  LANGUAGE sql IMMUTABLE
  SET search_path = ''
  AS $$
  SELECT pg_catalog.jsonb_build_object(
    'provider_name', l.provider_name,
    'api_endpoint', l.api_endpoint,
    'requests_per_minute', l.requests_per_minute,
    'tokens_per_minute', l.tokens_per_minute,
    'concurrent_requests', l.concurrent_requests,
    'window_seconds', l.window_seconds,
    'status', l.status)
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.api_rate_limit_json(public.api_rate_limits) FROM PUBLIC, anon, authenticated;

-- Find a limit by provider/endpoint or raise 22023 listing the valid ones.
-- +goose StatementBegin
CREATE FUNCTION public.api_rate_limit_find(p_provider_name text, p_api_endpoint text) RETURNS public.api_rate_limits
  LANGUAGE plpgsql STABLE SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  l public.api_rate_limits;
BEGIN
  IF p_provider_name IS NULL OR p_api_endpoint IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = 'provider name and API endpoint are required',
      HINT = 'valid provider/endpoint pairs: ' || coalesce((SELECT pg_catalog.string_agg(provider_name || '/' || api_endpoint, ', '
                 ORDER BY provider_name, api_endpoint) FROM public.api_rate_limits), '(none)');
  END IF;
  SELECT * INTO l FROM public.api_rate_limits WHERE provider_name = p_provider_name AND api_endpoint = p_api_endpoint;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('unknown provider/endpoint %s/%s', p_provider_name, p_api_endpoint),
      HINT = 'valid provider/endpoint pairs: ' || coalesce((SELECT pg_catalog.string_agg(provider_name || '/' || api_endpoint, ', '
                 ORDER BY provider_name, api_endpoint) FROM public.api_rate_limits), '(none)');
  END IF;
  RETURN l;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.api_rate_limit_find(text, text) FROM PUBLIC, anon, authenticated;

-- Count one event (a refusal, or a vendor 429 report) in a random shard and
-- build the refusal answer. Touches no limits row.
-- +goose StatementBegin
CREATE FUNCTION public.api_capacity_refuse(p_limit_id bigint, p_reason text, p_retry_after_ms bigint) RETURNS jsonb
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
BEGIN
  INSERT INTO public.api_capacity_refusals AS r (limit_id, minute, reason, shard, refusals)
  VALUES (p_limit_id, pg_catalog.date_trunc('minute', pg_catalog.clock_timestamp()), p_reason,
          pg_catalog.floor(pg_catalog.random() * 16)::smallint, 1)
  ON CONFLICT (limit_id, minute, reason, shard) DO UPDATE SET refusals = r.refusals + 1;
  RETURN pg_catalog.jsonb_build_object(
    'granted', false, 'hold_id', NULL, 'expires_at', NULL,
    'retry_after_ms', p_retry_after_ms, 'reason', p_reason);
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.api_capacity_refuse(bigint, text, bigint) FROM PUBLIC, anon, authenticated;

-- Recompute the window totals of one limit from the ledger. The caller holds
-- the advisory lock of that limit.
-- +goose StatementBegin
CREATE FUNCTION public.api_rate_limit_recount(p_limit_id bigint) RETURNS void
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  v_ts timestamptz := pg_catalog.clock_timestamp();
  v_from timestamptz;
BEGIN
  SELECT v_ts - pg_catalog.make_interval(secs => l.window_seconds) INTO v_from
  FROM public.api_rate_limits l WHERE l.id = p_limit_id;
  UPDATE public.api_rate_limits l
  SET window_requests = s.n, window_tokens = s.t, window_evicted_through = v_from
  FROM (SELECT count(*)::integer AS n, coalesce(sum(g.tokens), 0)::bigint AS t
        FROM public.api_capacity_ledger g
        WHERE g.limit_id = p_limit_id AND g.granted_at > v_from) s
  WHERE l.id = p_limit_id;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.api_rate_limit_recount(bigint) FROM PUBLIC, anon, authenticated;

-- Remove the dead holds of one limit and close their ledger rows. Rows
-- another transaction is releasing are skipped (never waited for). Job-tied
-- holds are dead when their job is gone, no longer processing, holds another
-- lease, or neither the hold nor the job's heartbeat is recent enough.
-- +goose StatementBegin
CREATE FUNCTION public.api_capacity_sweep(p_limit_id bigint, p_ts timestamptz) RETURNS integer
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  v_n integer;
  v_m integer := 0;
BEGIN
  WITH dead AS (
    SELECT h.id, h.expires_at FROM public.api_capacity_holds h
    WHERE h.limit_id = p_limit_id AND h.job_id IS NULL AND h.expires_at <= p_ts
    FOR UPDATE SKIP LOCKED
  ), del AS (
    DELETE FROM public.api_capacity_holds h USING dead WHERE h.id = dead.id
    RETURNING h.id, h.expires_at
  )
  UPDATE public.api_capacity_ledger g SET released_at = del.expires_at, release_reason = 'expired'
  FROM del WHERE g.id = del.id AND g.released_at IS NULL;
  GET DIAGNOSTICS v_n = ROW_COUNT;
  IF EXISTS (SELECT 1 FROM public.api_capacity_holds h WHERE h.limit_id = p_limit_id AND h.job_id IS NOT NULL) THEN
    WITH dead AS (
      SELECT h.id,
             CASE WHEN coalesce(j.status = 'processing' AND j.lease_token IS NOT DISTINCT FROM h.lease_token, false)
                  THEN 'expired' ELSE 'lease_lost' END AS why
      FROM public.api_capacity_holds h
      LEFT JOIN public.job_queue j ON j.id = h.job_id
      WHERE h.limit_id = p_limit_id AND h.job_id IS NOT NULL
        AND NOT coalesce(j.status = 'processing' AND j.lease_token IS NOT DISTINCT FROM h.lease_token
                         AND greatest(h.expires_at, j.heartbeat_at + pg_catalog.make_interval(secs => h.hold_seconds)) > p_ts,
                         false)
      FOR UPDATE OF h SKIP LOCKED
    ), del AS (
      DELETE FROM public.api_capacity_holds h USING dead WHERE h.id = dead.id
      RETURNING h.id, dead.why
    )
    UPDATE public.api_capacity_ledger g SET released_at = p_ts, release_reason = del.why
    FROM del WHERE g.id = del.id AND g.released_at IS NULL;
    GET DIAGNOSTICS v_m = ROW_COUNT;
  END IF;
  RETURN v_n + v_m;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.api_capacity_sweep(bigint, timestamptz) FROM PUBLIC, anon, authenticated;

-- ---------------------------------------------------------------------------
-- acquire / release
-- ---------------------------------------------------------------------------

-- acquire_api_capacity_v2: ask for one call's worth of capacity.
-- Returns {granted, hold_id, expires_at, retry_after_ms, reason, remaining}.
--   reason (when refused): disabled | maintenance | estimate_exceeds_limit |
--     job_not_held | blocked | concurrency | requests | tokens
--   retry_after_ms: how long to wait before asking again; NULL when waiting
--     cannot help (disabled, maintenance, estimate_exceeds_limit, job_not_held).
-- With p_job_id the hold is tied to the job and its current lease: it ends by
-- itself when the job completes, fails, is rescheduled, released, cancelled or
-- reclaimed, and lives as long as the job heartbeats (or until expires_at).
-- Bad input (unknown provider/endpoint or job, negative tokens, a hold lease
-- outside 1..86400 s) raises 22023 and writes nothing.
-- +goose StatementBegin
CREATE FUNCTION public.acquire_api_capacity_v2(
  p_provider_name text,
  p_api_endpoint text,
  p_estimated_tokens integer DEFAULT 0,
  p_job_id uuid DEFAULT NULL,
  p_lease_token uuid DEFAULT NULL,
  p_hold_seconds integer DEFAULT NULL
) RETURNS jsonb
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  l public.api_rate_limits;
  v_est integer := coalesce(p_estimated_tokens, 0);
  v_hold integer;
  v_job_status text;
  v_job_token uuid;
  v_lease uuid;
  v_ts timestamptz;
  v_win interval;
  v_from timestamptz;
  v_n integer;
  v_t bigint;
  v_live integer;
  v_dead integer;
  v_tied integer;
  v_reason text;
  v_retry bigint;
  v_r bigint;
  v_g timestamptz;
  v_id uuid;
BEGIN
  -- Validate.
  IF v_est < 0 THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('estimated tokens must be >= 0, got %s', v_est),
      HINT = 'pass 0 when the call uses no tokens';
  END IF;
  IF p_hold_seconds IS NOT NULL AND (p_hold_seconds < 1 OR p_hold_seconds > 86400) THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('hold seconds must be between 1 and 86400, got %s', p_hold_seconds),
      HINT = 'omit it to use the ratelimit.hold_seconds setting';
  END IF;
  IF p_lease_token IS NOT NULL AND p_job_id IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = 'a lease token was given without a job id',
      HINT = 'pass p_job_id with p_lease_token, or neither';
  END IF;
  l := public.api_rate_limit_find(p_provider_name, p_api_endpoint);
  v_hold := coalesce(p_hold_seconds,
                     (public.get_system_config('ratelimit.hold_seconds', '300'::jsonb) #>> '{}')::integer);
  IF p_job_id IS NOT NULL THEN
    SELECT j.status, j.lease_token INTO v_job_status, v_job_token FROM public.job_queue j WHERE j.id = p_job_id;
    IF NOT FOUND THEN
      RAISE EXCEPTION USING ERRCODE = '22023',
        MESSAGE = pg_catalog.format('unknown job %s', p_job_id),
        HINT = 'tie capacity only to a job this worker is processing';
    END IF;
    v_lease := coalesce(p_lease_token, v_job_token);
  END IF;

  -- Refusals that need no lock (they write only a refusal shard).
  IF l.status <> 'active' THEN
    RETURN public.api_capacity_refuse(l.id, l.status, NULL);
  END IF;
  IF l.tokens_per_minute IS NOT NULL AND v_est > l.tokens_per_minute THEN
    RETURN public.api_capacity_refuse(l.id, 'estimate_exceeds_limit', NULL);
  END IF;
  IF p_job_id IS NOT NULL AND (v_job_status IS DISTINCT FROM 'processing' OR v_job_token IS DISTINCT FROM v_lease) THEN
    RETURN public.api_capacity_refuse(l.id, 'job_not_held', NULL);
  END IF;
  IF l.blocked_until > pg_catalog.clock_timestamp() THEN
    RETURN public.api_capacity_refuse(l.id, 'blocked',
      pg_catalog.ceil(extract(epoch FROM l.blocked_until - pg_catalog.clock_timestamp()) * 1000)::bigint);
  END IF;

  -- Serialise decisions for this provider/endpoint. In READ COMMITTED every
  -- statement below sees what the previous lock holder committed; in
  -- stricter isolation the row lock turns a stale snapshot into a
  -- serialization failure instead of an over-grant.
  PERFORM pg_catalog.pg_advisory_xact_lock(730603, l.id::integer);
  IF pg_catalog.current_setting('transaction_isolation') = 'read committed' THEN
    SELECT * INTO l FROM public.api_rate_limits WHERE id = l.id;
  ELSE
    SELECT * INTO l FROM public.api_rate_limits WHERE id = l.id FOR UPDATE;
  END IF;
  IF NOT FOUND THEN
    l := public.api_rate_limit_find(p_provider_name, p_api_endpoint); -- removed meanwhile: raises
  END IF;
  IF l.status <> 'active' THEN
    RETURN public.api_capacity_refuse(l.id, l.status, NULL);
  END IF;
  IF l.tokens_per_minute IS NOT NULL AND v_est > l.tokens_per_minute THEN
    RETURN public.api_capacity_refuse(l.id, 'estimate_exceeds_limit', NULL);
  END IF;
  IF l.blocked_until > pg_catalog.clock_timestamp() THEN
    RETURN public.api_capacity_refuse(l.id, 'blocked',
      pg_catalog.ceil(extract(epoch FROM l.blocked_until - pg_catalog.clock_timestamp()) * 1000)::bigint);
  END IF;

  -- The decision time; never earlier than a boundary already evicted.
  v_win := pg_catalog.make_interval(secs => l.window_seconds);
  v_ts := greatest(pg_catalog.clock_timestamp(), l.window_evicted_through + v_win);
  v_from := v_ts - v_win;

  -- Slide the window: drop grants at or before v_from from the totals.
  IF l.window_evicted_through < v_from THEN
    SELECT count(*)::integer, coalesce(sum(g.tokens), 0)::bigint INTO v_n, v_t
    FROM public.api_capacity_ledger g
    WHERE g.limit_id = l.id AND g.granted_at > l.window_evicted_through AND g.granted_at <= v_from;
    l.window_requests := l.window_requests - v_n;
    l.window_tokens := l.window_tokens - v_t;
    l.window_evicted_through := v_from;
  END IF;

  -- Live holds. Untied holds live until expires_at; job-tied ones while the
  -- job is processing under the same lease and it heartbeats or the hold is
  -- unexpired.
  SELECT count(*) FILTER (WHERE h.job_id IS NULL AND h.expires_at > v_ts),
         count(*) FILTER (WHERE h.job_id IS NULL AND h.expires_at <= v_ts),
         count(*) FILTER (WHERE h.job_id IS NOT NULL)
    INTO v_live, v_dead, v_tied
  FROM public.api_capacity_holds h WHERE h.limit_id = l.id;
  IF v_tied > 0 THEN
    SELECT v_live + count(*) FILTER (WHERE x.alive), v_dead + count(*) FILTER (WHERE NOT x.alive)
      INTO v_live, v_dead
    FROM (SELECT coalesce(j.status = 'processing' AND j.lease_token IS NOT DISTINCT FROM h.lease_token
                          AND greatest(h.expires_at, j.heartbeat_at + pg_catalog.make_interval(secs => h.hold_seconds)) > v_ts,
                          false) AS alive
          FROM public.api_capacity_holds h
          LEFT JOIN public.job_queue j ON j.id = h.job_id
          WHERE h.limit_id = l.id AND h.job_id IS NOT NULL) x;
  END IF;

  -- Check every limit; the reason given is the one that takes longest to clear.
  v_retry := NULL;
  IF v_live >= l.concurrent_requests THEN
    v_reason := 'concurrency';
    v_retry := (public.get_system_config('ratelimit.concurrency_retry_after_ms', '1000'::jsonb) #>> '{}')::bigint;
  END IF;
  IF l.window_requests >= l.requests_per_minute THEN
    -- Wait until enough of the oldest grants leave the window.
    SELECT g.granted_at INTO v_g FROM public.api_capacity_ledger g
    WHERE g.limit_id = l.id AND g.granted_at > v_from
    ORDER BY g.granted_at, g.id
    OFFSET greatest(l.window_requests - l.requests_per_minute, 0) LIMIT 1;
    v_r := greatest(1, pg_catalog.ceil(extract(epoch FROM coalesce(v_g, v_ts) + v_win - v_ts) * 1000))::bigint;
    IF v_retry IS NULL OR v_r > v_retry THEN
      v_reason := 'requests';
      v_retry := v_r;
    END IF;
  END IF;
  IF l.tokens_per_minute IS NOT NULL AND l.window_tokens + v_est > l.tokens_per_minute THEN
    -- Wait until the oldest grants have freed enough tokens.
    SELECT x.granted_at INTO v_g FROM (
      SELECT g.granted_at, sum(g.tokens) OVER (ORDER BY g.granted_at, g.id) AS freed
      FROM public.api_capacity_ledger g
      WHERE g.limit_id = l.id AND g.granted_at > v_from) x
    WHERE l.window_tokens - x.freed + v_est <= l.tokens_per_minute
    ORDER BY x.granted_at LIMIT 1;
    v_r := greatest(1, pg_catalog.ceil(extract(epoch FROM coalesce(v_g, v_ts) + v_win - v_ts) * 1000))::bigint;
    IF v_retry IS NULL OR v_r > v_retry THEN
      v_reason := 'tokens';
      v_retry := v_r;
    END IF;
  END IF;
  IF v_reason IS NOT NULL THEN
    -- A refusal leaves the limits row alone (the eviction is redone next time).
    RETURN public.api_capacity_refuse(l.id, v_reason, v_retry);
  END IF;

  -- Remove dead holds (skipping any another transaction is releasing).
  IF v_dead > 0 THEN
    PERFORM public.api_capacity_sweep(l.id, v_ts);
  END IF;

  -- Grant.
  v_id := pg_catalog.gen_random_uuid();
  INSERT INTO public.api_capacity_holds (id, limit_id, tokens_estimated, job_id, lease_token, hold_seconds, acquired_at, expires_at)
  VALUES (v_id, l.id, v_est, p_job_id, v_lease, v_hold, v_ts, v_ts + pg_catalog.make_interval(secs => v_hold));
  INSERT INTO public.api_capacity_ledger (id, limit_id, granted_at, tokens, tokens_estimated, job_id)
  VALUES (v_id, l.id, v_ts, v_est, v_est, p_job_id);
  UPDATE public.api_rate_limits
  SET window_requests = l.window_requests + 1,
      window_tokens = l.window_tokens + v_est,
      window_evicted_through = l.window_evicted_through
  WHERE id = l.id;

  -- Now and then, purge history nobody needs any more.
  IF pg_catalog.random() < 0.02 THEN
    DELETE FROM public.api_capacity_ledger g
    WHERE g.limit_id = l.id AND g.granted_at < v_from - interval '1 hour';
    DELETE FROM public.api_capacity_refusals r
    WHERE r.limit_id = l.id AND r.minute < v_ts - interval '1 day';
  END IF;

  RETURN pg_catalog.jsonb_build_object(
    'granted', true,
    'hold_id', v_id,
    'expires_at', v_ts + pg_catalog.make_interval(secs => v_hold),
    'retry_after_ms', NULL,
    'reason', NULL,
    'remaining', pg_catalog.jsonb_build_object(
      'requests', l.requests_per_minute - l.window_requests - 1,
      'tokens', l.tokens_per_minute - l.window_tokens - v_est,
      'concurrency', l.concurrent_requests - v_live - 1));
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.acquire_api_capacity_v2(text, text, integer, uuid, uuid, integer) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.acquire_api_capacity_v2(text, text, integer, uuid, uuid, integer) TO service_role;


-- release_api_capacity_v2: end a hold and charge the window its actual token
-- count (NULL keeps the estimate). Safe to call twice and after the hold has
-- expired or its job finished: the token correction still applies once.
-- Returns {hold_id, released (a live hold was ended now), corrected}.
-- +goose StatementBegin
CREATE FUNCTION public.release_api_capacity_v2(p_hold_id uuid, p_actual_tokens integer DEFAULT NULL) RETURNS jsonb
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  v_limit bigint;
  v_granted timestamptz;
  v_tokens integer;
  v_actual integer;
  v_evicted timestamptz;
  v_released boolean;
  v_corrected boolean := false;
BEGIN
  IF p_hold_id IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'hold id is required',
      HINT = 'pass the hold_id returned by acquire_api_capacity_v2';
  END IF;
  IF p_actual_tokens < 0 THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('actual tokens must be >= 0, got %s', p_actual_tokens),
      HINT = 'pass NULL to keep the estimate';
  END IF;
  SELECT g.limit_id, g.granted_at, g.tokens, g.tokens_actual INTO v_limit, v_granted, v_tokens, v_actual
  FROM public.api_capacity_ledger g WHERE g.id = p_hold_id;
  IF FOUND AND p_actual_tokens IS NOT NULL AND v_actual IS NULL THEN
    IF p_actual_tokens <> v_tokens THEN
      -- The window totals change: take the limit's lock, as acquire does.
      PERFORM pg_catalog.pg_advisory_xact_lock(730603, v_limit::integer);
      SELECT g.tokens, g.tokens_actual INTO v_tokens, v_actual
      FROM public.api_capacity_ledger g WHERE g.id = p_hold_id FOR UPDATE;
      IF v_actual IS NULL THEN
        SELECT l.window_evicted_through INTO v_evicted FROM public.api_rate_limits l WHERE l.id = v_limit;
        IF v_granted > v_evicted THEN
          UPDATE public.api_rate_limits SET window_tokens = window_tokens + (p_actual_tokens - v_tokens)
          WHERE id = v_limit;
        END IF;
        v_corrected := true;
      END IF;
    ELSE
      v_corrected := true;
    END IF;
  END IF;
  DELETE FROM public.api_capacity_holds WHERE id = p_hold_id;
  v_released := FOUND;
  UPDATE public.api_capacity_ledger g
  SET tokens = CASE WHEN v_corrected THEN p_actual_tokens ELSE g.tokens END,
      tokens_actual = CASE WHEN v_corrected THEN p_actual_tokens ELSE g.tokens_actual END,
      released_at = coalesce(g.released_at, pg_catalog.clock_timestamp()),
      release_reason = coalesce(g.release_reason, 'released')
  WHERE g.id = p_hold_id AND (v_corrected OR g.released_at IS NULL);
  RETURN pg_catalog.jsonb_build_object('hold_id', p_hold_id, 'released', v_released, 'corrected', v_corrected);
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.release_api_capacity_v2(uuid, integer) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.release_api_capacity_v2(uuid, integer) TO service_role;

-- acquire_api_capacity: the app's original boolean call. A grant is an
-- untied hold with the default lease (ratelimit.hold_seconds).
-- +goose StatementBegin
CREATE FUNCTION public.acquire_api_capacity(p_provider_name text, p_api_endpoint text, p_estimated_tokens integer)
  RETURNS boolean
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
BEGIN
  RETURN (public.acquire_api_capacity_v2(p_provider_name, p_api_endpoint, p_estimated_tokens) ->> 'granted')::boolean;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.acquire_api_capacity(text, text, integer) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.acquire_api_capacity(text, text, integer) TO service_role;

-- release_api_capacity: the app's original release, which cannot name its
-- hold. It ends the oldest untied hold of that provider/endpoint, preferring
-- one acquired with the same estimate, and charges it p_actual_tokens (NULL
-- keeps the estimate). With no live untied hold left (it expired) it still
-- corrects the oldest uncorrected untied grant of the window. Returns whether
-- a hold was ended.
-- +goose StatementBegin
CREATE FUNCTION public.release_api_capacity(p_provider_name text, p_api_endpoint text,
                                            p_estimated_tokens integer, p_actual_tokens integer)
  RETURNS boolean
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  l public.api_rate_limits;
  v_id uuid;
BEGIN
  IF p_estimated_tokens < 0 OR p_actual_tokens < 0 THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('token counts must be >= 0, got estimated %s, actual %s', p_estimated_tokens, p_actual_tokens);
  END IF;
  l := public.api_rate_limit_find(p_provider_name, p_api_endpoint);
  -- Same lock order as everywhere: the limit's lock, then hold rows.
  PERFORM pg_catalog.pg_advisory_xact_lock(730603, l.id::integer);
  SELECT h.id INTO v_id FROM public.api_capacity_holds h
  WHERE h.limit_id = l.id AND h.job_id IS NULL
  ORDER BY (h.tokens_estimated = coalesce(p_estimated_tokens, -1)) DESC, h.acquired_at, h.id
  LIMIT 1 FOR UPDATE SKIP LOCKED;
  IF FOUND THEN
    PERFORM public.release_api_capacity_v2(v_id, p_actual_tokens);
    RETURN true;
  END IF;
  IF p_actual_tokens IS NOT NULL THEN
    SELECT g.id INTO v_id FROM public.api_capacity_ledger g
    WHERE g.limit_id = l.id AND g.job_id IS NULL AND g.tokens_actual IS NULL
      AND g.granted_at > pg_catalog.clock_timestamp() - pg_catalog.make_interval(secs => l.window_seconds)
    ORDER BY (g.tokens_estimated = coalesce(p_estimated_tokens, -1)) DESC, g.granted_at, g.id
    LIMIT 1;
    IF FOUND THEN
      PERFORM public.release_api_capacity_v2(v_id, p_actual_tokens);
    END IF;
  END IF;
  RETURN false;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.release_api_capacity(text, text, integer, integer) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.release_api_capacity(text, text, integer, integer) TO service_role;

-- extend_api_capacity: renew the lease of live holds (a long call in
-- progress). Each hold gets at least p_hold_seconds (default: its own lease)
-- from now; a lease is never shortened. Returns the ids that are no longer
-- held (released, expired, or their job lease was lost): stop using them.
-- +goose StatementBegin
CREATE FUNCTION public.extend_api_capacity(p_hold_ids uuid[], p_hold_seconds integer DEFAULT NULL)
  RETURNS SETOF uuid
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  v_ts timestamptz := pg_catalog.clock_timestamp();
  v_ok uuid[];
  v_tied uuid[];
BEGIN
  IF p_hold_seconds IS NOT NULL AND (p_hold_seconds < 1 OR p_hold_seconds > 86400) THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('hold seconds must be between 1 and 86400, got %s', p_hold_seconds),
      HINT = 'omit it to renew each hold by its own lease';
  END IF;
  IF p_hold_ids IS NULL OR pg_catalog.cardinality(p_hold_ids) = 0 THEN
    RETURN;
  END IF;
  WITH upd AS (
    UPDATE public.api_capacity_holds h
    SET expires_at = greatest(h.expires_at, v_ts + pg_catalog.make_interval(secs => coalesce(p_hold_seconds, h.hold_seconds)))
    WHERE h.id = ANY (p_hold_ids) AND h.job_id IS NULL AND h.expires_at > v_ts
    RETURNING h.id)
  SELECT pg_catalog.array_agg(id) INTO v_ok FROM upd;
  SELECT pg_catalog.array_agg(h.id) INTO v_tied FROM public.api_capacity_holds h
  WHERE h.id = ANY (p_hold_ids) AND h.job_id IS NOT NULL;
  IF v_tied IS NOT NULL THEN
    WITH upd AS (
      UPDATE public.api_capacity_holds h
      SET expires_at = greatest(h.expires_at, v_ts + pg_catalog.make_interval(secs => coalesce(p_hold_seconds, h.hold_seconds)))
      FROM public.job_queue j
      WHERE h.id = ANY (v_tied) AND j.id = h.job_id AND j.status = 'processing'
        AND j.lease_token IS NOT DISTINCT FROM h.lease_token
        AND greatest(h.expires_at, j.heartbeat_at + pg_catalog.make_interval(secs => h.hold_seconds)) > v_ts
      RETURNING h.id)
    SELECT coalesce(v_ok, '{}') || coalesce(pg_catalog.array_agg(id), '{}') INTO v_ok FROM upd;
  END IF;
  RETURN QUERY SELECT DISTINCT x FROM pg_catalog.unnest(p_hold_ids) x
               WHERE x IS NOT NULL AND NOT (x = ANY (coalesce(v_ok, '{}')));
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.extend_api_capacity(uuid[], integer) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.extend_api_capacity(uuid[], integer) TO service_role;

-- report_api_rate_limited: a vendor answered 429. Blocks the
-- provider/endpoint for every worker until now + p_retry_after_seconds (NULL:
-- ratelimit.default_pushback_seconds). A block is only ever extended, and
-- reports within a second of the current end write nothing, so a storm of
-- identical 429s does not hammer the row. Returns {blocked_until, extended}.
-- +goose StatementBegin
CREATE FUNCTION public.report_api_rate_limited(p_provider_name text, p_api_endpoint text,
                                               p_retry_after_seconds numeric DEFAULT NULL)
  RETURNS jsonb
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  l public.api_rate_limits;
  v_secs numeric;
  v_now timestamptz := pg_catalog.clock_timestamp();
  v_until timestamptz;
  v_extended boolean;
BEGIN
  v_secs := coalesce(p_retry_after_seconds,
                     (public.get_system_config('ratelimit.default_pushback_seconds', '60'::jsonb) #>> '{}')::numeric);
  IF v_secs <= 0 OR v_secs > 86400 THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('retry-after must be more than 0 and at most 86400 seconds, got %s', v_secs),
      HINT = 'pass NULL to use ratelimit.default_pushback_seconds';
  END IF;
  l := public.api_rate_limit_find(p_provider_name, p_api_endpoint);
  v_until := v_now + pg_catalog.make_interval(secs => v_secs::double precision);
  UPDATE public.api_rate_limits
  SET blocked_until = v_until, blocked_at = v_now
  WHERE id = l.id AND (blocked_until IS NULL OR blocked_until < v_until - interval '1 second');
  v_extended := FOUND;
  PERFORM public.api_capacity_refuse(l.id, 'vendor_429', NULL);
  SELECT greatest(x.blocked_until, v_until) INTO v_until FROM public.api_rate_limits x WHERE x.id = l.id;
  RETURN pg_catalog.jsonb_build_object('blocked_until', v_until, 'extended', v_extended);
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.report_api_rate_limited(text, text, numeric) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.report_api_rate_limited(text, text, numeric) TO service_role;

-- Live holds of one limit (job-tied ones checked against their job).
-- +goose StatementBegin
CREATE FUNCTION public.api_capacity_in_flight(p_limit_id bigint, p_ts timestamptz) RETURNS integer
  LANGUAGE plpgsql STABLE SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  v_untied integer;
  v_tied integer := 0;
BEGIN
  SELECT count(*) INTO v_untied FROM public.api_capacity_holds h
  WHERE h.limit_id = p_limit_id AND h.job_id IS NULL AND h.expires_at > p_ts;
  IF EXISTS (SELECT 1 FROM public.api_capacity_holds h WHERE h.limit_id = p_limit_id AND h.job_id IS NOT NULL) THEN
    SELECT count(*) INTO v_tied FROM public.api_capacity_holds h
    JOIN public.job_queue j ON j.id = h.job_id
    WHERE h.limit_id = p_limit_id AND j.status = 'processing'
      AND j.lease_token IS NOT DISTINCT FROM h.lease_token
      AND greatest(h.expires_at, j.heartbeat_at + pg_catalog.make_interval(secs => h.hold_seconds)) > p_ts;
  END IF;
  RETURN v_untied + v_tied;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.api_capacity_in_flight(bigint, timestamptz) FROM PUBLIC, anon, authenticated;

-- get_api_capacity_status: live use of every limit (or one provider, or one
-- provider/endpoint): requests and tokens in the current window, calls in
-- flight, the vendor block, refusals and vendor 429s in the last hour.
-- +goose StatementBegin
CREATE FUNCTION public.get_api_capacity_status(p_provider_name text DEFAULT NULL, p_api_endpoint text DEFAULT NULL)
  RETURNS TABLE (
    provider_name text, api_endpoint text, status text, window_seconds integer,
    requests_per_minute integer, requests_used integer,
    tokens_per_minute integer, tokens_used bigint,
    concurrent_requests integer, in_flight integer,
    blocked_until timestamptz,
    refusals_last_hour bigint, refusals_by_reason jsonb, vendor_429_last_hour bigint)
  LANGUAGE plpgsql STABLE SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  v_ts timestamptz := pg_catalog.clock_timestamp();
BEGIN
  IF p_provider_name IS NOT NULL AND NOT EXISTS (
       SELECT 1 FROM public.api_rate_limits x WHERE x.provider_name = p_provider_name
         AND (p_api_endpoint IS NULL OR x.api_endpoint = p_api_endpoint)) THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('unknown provider/endpoint %s%s', p_provider_name, coalesce('/' || p_api_endpoint, '')),
      HINT = 'valid provider/endpoint pairs: ' || coalesce((SELECT pg_catalog.string_agg(x.provider_name || '/' || x.api_endpoint, ', '
                 ORDER BY x.provider_name, x.api_endpoint) FROM public.api_rate_limits x), '(none)');
  END IF;
  RETURN QUERY
  SELECT l.provider_name, l.api_endpoint, l.status, l.window_seconds,
         l.requests_per_minute, coalesce(w.n, 0)::integer,
         l.tokens_per_minute, coalesce(w.t, 0)::bigint,
         l.concurrent_requests, public.api_capacity_in_flight(l.id, v_ts),
         CASE WHEN l.blocked_until > v_ts THEN l.blocked_until END,
         coalesce(r.total, 0)::bigint, coalesce(r.by_reason, '{}'::jsonb), coalesce(r.v429, 0)::bigint
  FROM public.api_rate_limits l
  LEFT JOIN LATERAL (
    SELECT count(*) AS n, sum(g.tokens) AS t FROM public.api_capacity_ledger g
    WHERE g.limit_id = l.id AND g.granted_at > v_ts - pg_catalog.make_interval(secs => l.window_seconds)) w ON true
  LEFT JOIN LATERAL (
    SELECT sum(y.c) FILTER (WHERE y.reason <> 'vendor_429') AS total,
           pg_catalog.jsonb_object_agg(y.reason, y.c) FILTER (WHERE y.reason <> 'vendor_429') AS by_reason,
           sum(y.c) FILTER (WHERE y.reason = 'vendor_429') AS v429
    FROM (SELECT f.reason, sum(f.refusals) AS c FROM public.api_capacity_refusals f
          WHERE f.limit_id = l.id AND f.minute > v_ts - interval '1 hour'
          GROUP BY f.reason) y) r ON true
  WHERE (p_provider_name IS NULL OR l.provider_name = p_provider_name)
    AND (p_api_endpoint IS NULL OR l.api_endpoint = p_api_endpoint)
  ORDER BY l.provider_name, l.api_endpoint;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.get_api_capacity_status(text, text) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.get_api_capacity_status(text, text) TO service_role;

-- ---------------------------------------------------------------------------
-- Administration (v3ctl limits ...): validated, audited
-- ---------------------------------------------------------------------------

-- Validate a limit's configuration; raises 22023 naming the bad value.
-- +goose StatementBegin
CREATE FUNCTION public.api_rate_limit_validate(l public.api_rate_limits) RETURNS void
  LANGUAGE plpgsql IMMUTABLE
  SET search_path = ''
  AS $$
BEGIN
  IF l.provider_name IS NULL OR l.provider_name !~ '^[a-z0-9][a-z0-9._-]{0,62}$' THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('invalid provider name %L', l.provider_name),
      HINT = 'use lowercase letters, digits, ".", "_" or "-" (at most 63), e.g. openai';
  END IF;
  IF l.api_endpoint IS NULL OR l.api_endpoint !~ '^[a-z0-9][a-z0-9._-]{0,126}$' THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('invalid API endpoint %L', l.api_endpoint),
      HINT = 'use lowercase letters, digits, ".", "_" or "-" (at most 127), e.g. gpt-4o-mini';
  END IF;
  IF l.requests_per_minute IS NULL OR l.requests_per_minute < 1 THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('requests per minute must be a positive integer, got %s', coalesce(l.requests_per_minute::text, 'nothing'));
  END IF;
  IF l.tokens_per_minute < 1 THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('tokens per minute must be a positive integer, got %s', l.tokens_per_minute),
      HINT = 'NULL (CLI: none) means tokens are not limited';
  END IF;
  IF l.concurrent_requests IS NULL OR l.concurrent_requests < 1 THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('concurrent requests must be a positive integer, got %s', coalesce(l.concurrent_requests::text, 'nothing'));
  END IF;
  IF l.status IS NULL OR l.status NOT IN ('active', 'disabled', 'maintenance') THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('invalid status %L', l.status),
      HINT = 'valid statuses: active, disabled, maintenance';
  END IF;
  IF l.window_seconds IS NULL OR l.window_seconds NOT BETWEEN 1 AND 3600 THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('window seconds must be between 1 and 3600, got %s', coalesce(l.window_seconds::text, 'nothing')),
      HINT = 'vendors count per 60 seconds; shorter windows are for tests';
  END IF;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.api_rate_limit_validate(public.api_rate_limits) FROM PUBLIC, anon, authenticated;

-- add_api_rate_limit: a new provider/endpoint. Returns its configuration.
-- +goose StatementBegin
CREATE FUNCTION public.add_api_rate_limit(
  p_provider_name text, p_api_endpoint text,
  p_requests_per_minute integer, p_tokens_per_minute integer, p_concurrent_requests integer,
  p_status text DEFAULT 'active', p_window_seconds integer DEFAULT 60,
  p_actor text DEFAULT NULL, p_reason text DEFAULT NULL
) RETURNS jsonb
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  l public.api_rate_limits;
BEGIN
  l.provider_name := p_provider_name;
  l.api_endpoint := p_api_endpoint;
  l.requests_per_minute := p_requests_per_minute;
  l.tokens_per_minute := p_tokens_per_minute;
  l.concurrent_requests := p_concurrent_requests;
  l.status := coalesce(p_status, 'active');
  l.window_seconds := coalesce(p_window_seconds, 60);
  PERFORM public.api_rate_limit_validate(l);
  IF EXISTS (SELECT 1 FROM public.api_rate_limits x WHERE x.provider_name = p_provider_name AND x.api_endpoint = p_api_endpoint) THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('%s/%s already exists', p_provider_name, p_api_endpoint),
      HINT = 'change it with: v3ctl limits set (set_api_rate_limit)';
  END IF;
  INSERT INTO public.api_rate_limits (provider_name, api_endpoint, requests_per_minute, tokens_per_minute,
                                     concurrent_requests, status, window_seconds, updated_by)
  VALUES (l.provider_name, l.api_endpoint, l.requests_per_minute, l.tokens_per_minute,
          l.concurrent_requests, l.status, l.window_seconds, coalesce(nullif(p_actor, ''), session_user::text))
  RETURNING * INTO l;
  PERFORM public.log_audit_event('api_rate_limits', l.provider_name || '/' || l.api_endpoint, 'INSERT',
    NULL, public.api_rate_limit_json(l), p_reason, 'configuration', NULL, NULL, NULL, p_actor);
  RETURN public.api_rate_limit_json(l);
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.add_api_rate_limit(text, text, integer, integer, integer, text, integer, text, text) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.add_api_rate_limit(text, text, integer, integer, integer, text, integer, text, text) TO service_role;

-- set_api_rate_limit: change some of requests_per_minute, tokens_per_minute
-- (null = unlimited), concurrent_requests, status, window_seconds, given as a
-- JSON object. Returns {key, old, new, changed}; no change, no audit row.
-- +goose StatementBegin
CREATE FUNCTION public.set_api_rate_limit(p_provider_name text, p_api_endpoint text, p_changes jsonb,
                                          p_actor text DEFAULT NULL, p_reason text DEFAULT NULL)
  RETURNS jsonb
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  l public.api_rate_limits;
  n public.api_rate_limits;
  v_key text;
  v_bad text;
  v_int integer;
BEGIN
  IF p_changes IS NULL OR pg_catalog.jsonb_typeof(p_changes) <> 'object' OR p_changes = '{}'::jsonb THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'nothing to change: pass a JSON object of settings',
      HINT = 'valid keys: requests_per_minute, tokens_per_minute, concurrent_requests, status, window_seconds';
  END IF;
  SELECT pg_catalog.string_agg(k, ', ') INTO v_bad FROM pg_catalog.jsonb_object_keys(p_changes) k
  WHERE k NOT IN ('requests_per_minute', 'tokens_per_minute', 'concurrent_requests', 'status', 'window_seconds');
  IF v_bad IS NOT NULL THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = pg_catalog.format('unknown setting(s): %s', v_bad),
      HINT = 'valid keys: requests_per_minute, tokens_per_minute, concurrent_requests, status, window_seconds';
  END IF;
  l := public.api_rate_limit_find(p_provider_name, p_api_endpoint);
  PERFORM pg_catalog.pg_advisory_xact_lock(730603, l.id::integer);
  SELECT * INTO l FROM public.api_rate_limits WHERE id = l.id FOR UPDATE;
  n := l;
  FOR v_key IN SELECT k FROM pg_catalog.jsonb_object_keys(p_changes) k LOOP
    IF v_key = 'status' THEN
      IF pg_catalog.jsonb_typeof(p_changes -> v_key) <> 'string' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
          MESSAGE = pg_catalog.format('status must be a string, got %s', p_changes -> v_key),
          HINT = 'valid statuses: active, disabled, maintenance';
      END IF;
      n.status := p_changes ->> v_key;
      CONTINUE;
    END IF;
    IF v_key = 'tokens_per_minute' AND pg_catalog.jsonb_typeof(p_changes -> v_key) = 'null' THEN
      n.tokens_per_minute := NULL;
      CONTINUE;
    END IF;
    IF pg_catalog.jsonb_typeof(p_changes -> v_key) <> 'number'
       OR (p_changes ->> v_key)::numeric <> pg_catalog.trunc((p_changes ->> v_key)::numeric)
       OR (p_changes ->> v_key)::numeric NOT BETWEEN 1 AND 2147483647 THEN
      RAISE EXCEPTION USING ERRCODE = '22023',
        MESSAGE = pg_catalog.format('%s must be a positive integer, got %s', v_key, p_changes -> v_key),
        HINT = CASE WHEN v_key = 'tokens_per_minute' THEN 'null means tokens are not limited' END;
    END IF;
    v_int := (p_changes ->> v_key)::integer;
    CASE v_key
      WHEN 'requests_per_minute' THEN n.requests_per_minute := v_int;
      WHEN 'tokens_per_minute' THEN n.tokens_per_minute := v_int;
      WHEN 'concurrent_requests' THEN n.concurrent_requests := v_int;
      WHEN 'window_seconds' THEN n.window_seconds := v_int;
    END CASE;
  END LOOP;
  PERFORM public.api_rate_limit_validate(n);
  IF public.api_rate_limit_json(n) = public.api_rate_limit_json(l) THEN
    RETURN pg_catalog.jsonb_build_object('key', l.provider_name || '/' || l.api_endpoint,
      'old', public.api_rate_limit_json(l), 'new', public.api_rate_limit_json(n), 'changed', false);
  END IF;
  UPDATE public.api_rate_limits
  SET requests_per_minute = n.requests_per_minute, tokens_per_minute = n.tokens_per_minute,
      concurrent_requests = n.concurrent_requests, status = n.status, window_seconds = n.window_seconds,
      updated_at = pg_catalog.now(), updated_by = coalesce(nullif(p_actor, ''), session_user::text)
  WHERE id = l.id;
  IF n.window_seconds <> l.window_seconds THEN
    PERFORM public.api_rate_limit_recount(l.id);
  END IF;
  PERFORM public.log_audit_event('api_rate_limits', l.provider_name || '/' || l.api_endpoint, 'UPDATE',
    public.api_rate_limit_json(l), public.api_rate_limit_json(n), p_reason, 'configuration', NULL, NULL, NULL, p_actor);
  RETURN pg_catalog.jsonb_build_object('key', l.provider_name || '/' || l.api_endpoint,
    'old', public.api_rate_limit_json(l), 'new', public.api_rate_limit_json(n), 'changed', true);
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.set_api_rate_limit(text, text, jsonb, text, text) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.set_api_rate_limit(text, text, jsonb, text, text) TO service_role;

-- remove_api_rate_limit: delete a provider/endpoint with its holds, ledger
-- and refusal counts. Returns {removed (its configuration), in_flight}.
-- +goose StatementBegin
CREATE FUNCTION public.remove_api_rate_limit(p_provider_name text, p_api_endpoint text,
                                             p_actor text DEFAULT NULL, p_reason text DEFAULT NULL)
  RETURNS jsonb
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  l public.api_rate_limits;
  v_in_flight integer;
BEGIN
  l := public.api_rate_limit_find(p_provider_name, p_api_endpoint);
  PERFORM pg_catalog.pg_advisory_xact_lock(730603, l.id::integer);
  v_in_flight := public.api_capacity_in_flight(l.id, pg_catalog.clock_timestamp());
  DELETE FROM public.api_capacity_refusals WHERE limit_id = l.id;
  DELETE FROM public.api_rate_limits WHERE id = l.id;
  PERFORM public.log_audit_event('api_rate_limits', l.provider_name || '/' || l.api_endpoint, 'DELETE',
    public.api_rate_limit_json(l) || pg_catalog.jsonb_build_object('in_flight', v_in_flight), NULL,
    p_reason, 'configuration', NULL, NULL, NULL, p_actor);
  RETURN pg_catalog.jsonb_build_object('removed', public.api_rate_limit_json(l), 'in_flight', v_in_flight);
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.remove_api_rate_limit(text, text, text, text) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.remove_api_rate_limit(text, text, text, text) TO service_role;

-- reset_api_rate_limit: clear the holds, the window ledger and any vendor
-- block of one provider/endpoint, or of every endpoint of a provider when
-- p_api_endpoint is NULL. Refusal statistics are kept. One audit row per
-- endpoint. Returns {reset: [keys], holds_cleared, grants_cleared, unblocked}.
-- +goose StatementBegin
CREATE FUNCTION public.reset_api_rate_limit(p_provider_name text, p_api_endpoint text DEFAULT NULL,
                                            p_actor text DEFAULT NULL, p_reason text DEFAULT NULL)
  RETURNS jsonb
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  l public.api_rate_limits;
  v_keys text[] := '{}';
  v_holds integer;
  v_grants integer;
  v_total_holds integer := 0;
  v_total_grants integer := 0;
  v_unblocked integer := 0;
  v_ts timestamptz;
BEGIN
  IF p_api_endpoint IS NOT NULL THEN
    PERFORM public.api_rate_limit_find(p_provider_name, p_api_endpoint);
  ELSIF p_provider_name IS NULL OR NOT EXISTS (SELECT 1 FROM public.api_rate_limits x WHERE x.provider_name = p_provider_name) THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('unknown provider %s', coalesce(p_provider_name, '(none given)')),
      HINT = 'valid providers: ' || coalesce((SELECT pg_catalog.string_agg(DISTINCT x.provider_name, ', ')
                                               FROM public.api_rate_limits x), '(none)');
  END IF;
  FOR l IN SELECT * FROM public.api_rate_limits x
           WHERE x.provider_name = p_provider_name AND (p_api_endpoint IS NULL OR x.api_endpoint = p_api_endpoint)
           ORDER BY x.id LOOP
    PERFORM pg_catalog.pg_advisory_xact_lock(730603, l.id::integer);
    SELECT * INTO l FROM public.api_rate_limits x WHERE x.id = l.id FOR UPDATE;
    v_ts := pg_catalog.clock_timestamp();
    DELETE FROM public.api_capacity_holds WHERE limit_id = l.id;
    GET DIAGNOSTICS v_holds = ROW_COUNT;
    DELETE FROM public.api_capacity_ledger WHERE limit_id = l.id;
    GET DIAGNOSTICS v_grants = ROW_COUNT;
    UPDATE public.api_rate_limits
    SET blocked_until = NULL, blocked_at = NULL, window_requests = 0, window_tokens = 0,
        window_evicted_through = v_ts - pg_catalog.make_interval(secs => l.window_seconds)
    WHERE id = l.id;
    IF l.blocked_until > v_ts THEN
      v_unblocked := v_unblocked + 1;
    END IF;
    PERFORM public.log_audit_event('api_rate_limits', l.provider_name || '/' || l.api_endpoint, 'RESET',
      pg_catalog.jsonb_build_object('holds', v_holds, 'grants', v_grants,
        'blocked_until', CASE WHEN l.blocked_until > v_ts THEN l.blocked_until END),
      NULL, p_reason, 'configuration', NULL, NULL, NULL, p_actor);
    v_keys := v_keys || (l.provider_name || '/' || l.api_endpoint);
    v_total_holds := v_total_holds + v_holds;
    v_total_grants := v_total_grants + v_grants;
  END LOOP;
  RETURN pg_catalog.jsonb_build_object('reset', pg_catalog.to_jsonb(v_keys), 'holds_cleared', v_total_holds,
    'grants_cleared', v_total_grants, 'unblocked', v_unblocked);
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.reset_api_rate_limit(text, text, text, text) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.reset_api_rate_limit(text, text, text, text) TO service_role;

-- +goose Down
DROP FUNCTION IF EXISTS public.reset_api_rate_limit(text, text, text, text);
DROP FUNCTION IF EXISTS public.remove_api_rate_limit(text, text, text, text);
DROP FUNCTION IF EXISTS public.set_api_rate_limit(text, text, jsonb, text, text);
DROP FUNCTION IF EXISTS public.add_api_rate_limit(text, text, integer, integer, integer, text, integer, text, text);
DROP FUNCTION IF EXISTS public.api_rate_limit_validate(public.api_rate_limits);
DROP FUNCTION IF EXISTS public.get_api_capacity_status(text, text);
DROP FUNCTION IF EXISTS public.api_capacity_in_flight(bigint, timestamptz);
DROP FUNCTION IF EXISTS public.report_api_rate_limited(text, text, numeric);
DROP FUNCTION IF EXISTS public.extend_api_capacity(uuid[], integer);
DROP FUNCTION IF EXISTS public.release_api_capacity(text, text, integer, integer);
DROP FUNCTION IF EXISTS public.acquire_api_capacity(text, text, integer);
DROP FUNCTION IF EXISTS public.release_api_capacity_v2(uuid, integer);
DROP FUNCTION IF EXISTS public.acquire_api_capacity_v2(text, text, integer, uuid, uuid, integer);
DROP FUNCTION IF EXISTS public.api_capacity_sweep(bigint, timestamptz);
DROP FUNCTION IF EXISTS public.api_rate_limit_recount(bigint);
DROP FUNCTION IF EXISTS public.api_capacity_refuse(bigint, text, bigint);
DROP FUNCTION IF EXISTS public.api_rate_limit_find(text, text);
DROP FUNCTION IF EXISTS public.api_rate_limit_json(public.api_rate_limits);
DELETE FROM public.system_configuration WHERE config_key IN (
  'ratelimit.hold_seconds', 'ratelimit.concurrency_retry_after_ms',
  'ratelimit.max_wait_seconds', 'ratelimit.default_pushback_seconds');
DROP TABLE IF EXISTS public.api_capacity_refusals;
DROP TABLE IF EXISTS public.api_capacity_ledger;
DROP TABLE IF EXISTS public.api_capacity_holds;
DROP TABLE IF EXISTS public.api_rate_limits;
