-- Usage metering and subscription plans.
--
-- Units and periods (see docs/usage.md):
--   * Storage is counted in exact bytes; 1 MB = 1,048,576 bytes (MiB) is only
--     a display unit (storage_limit_bytes holds the exact limit).
--   * Prices are integer cents.
--   * The billing period is the calendar month in UTC; an event's period is
--     derived from its own timestamp (occurred_at), never from "now".
--
-- Model:
--   subscription_plans        plans and their limits (NULL = unlimited)
--   account_plans             the plan of each account (auth.users id); an
--                             account without a row is on 'free'. Dependents'
--                             profiles share their account owner's plan.
--   account_plan_history      every plan change (append-only)
--   usage_events              append-only ledger; idempotency_key UNIQUE so a
--                             retried upload or job never counts twice
--   usage_monthly             per profile and month aggregates, updated in the
--                             same transaction as the event insert
--   usage_storage             per profile storage level (bytes) - a level, not
--                             a monthly flow; falls when a file is archived or
--                             deleted (trigger on shell_files)
--   usage_storage_files       per shell file: the bytes counted and whether
--                             they are currently counted in the level
--
-- Every write goes through public.usage_insert_event, which inserts the event
-- and applies it to the aggregates; rebuild/verify recompute the aggregates
-- from the events with the same rule.
--
-- Enforcement (features.billing_enabled = true) refuses with SQLSTATE V3L01
-- ("usage limit exceeded"), a message naming the limit and DETAIL
-- 'limit=<metric>' where metric is shell_files, pages, ai_tokens or storage.

-- +goose Up

-- ---------------------------------------------------------------------------
-- Plans
-- ---------------------------------------------------------------------------
CREATE TABLE public.subscription_plans (
  plan_key text PRIMARY KEY CHECK (plan_key ~ '^[a-z][a-z0-9_]{0,39}$'),
  display_name text NOT NULL CHECK (length(btrim(display_name)) > 0),
  monthly_shell_files_limit integer CHECK (monthly_shell_files_limit >= 0),
  monthly_pages_limit integer CHECK (monthly_pages_limit >= 0),
  monthly_ai_tokens_limit bigint CHECK (monthly_ai_tokens_limit >= 0),
  storage_limit_bytes bigint CHECK (storage_limit_bytes >= 0),
  price_cents integer NOT NULL CHECK (price_cents >= 0),
  currency text NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$'),
  tier_rank integer NOT NULL DEFAULT 0,
  is_active boolean NOT NULL DEFAULT true,
  retired_at timestamptz,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CHECK (is_active = (retired_at IS NULL))
);
CREATE TRIGGER subscription_plans_updated_at BEFORE UPDATE ON public.subscription_plans
  FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();

INSERT INTO public.subscription_plans
  (plan_key, display_name, monthly_shell_files_limit, monthly_pages_limit, monthly_ai_tokens_limit,
   storage_limit_bytes, price_cents, tier_rank)
VALUES
  ('free', 'Free', 10, 100, 50000, 100::bigint * 1048576, 0, 0),
  ('basic', 'Basic', 100, 1000, 500000, 1000::bigint * 1048576, 999, 10),
  ('premium', 'Premium', 500, 5000, 2500000, 5000::bigint * 1048576, 2999, 20),
  ('enterprise', 'Enterprise', NULL, NULL, NULL, NULL, 9999, 30);

CREATE TABLE public.account_plans (
  account_id uuid PRIMARY KEY REFERENCES auth.users(id) ON DELETE CASCADE,
  plan_key text NOT NULL REFERENCES public.subscription_plans(plan_key),
  assigned_by text,
  assigned_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX account_plans_plan_key_idx ON public.account_plans (plan_key);
CREATE TRIGGER account_plans_updated_at BEFORE UPDATE ON public.account_plans
  FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();

CREATE TABLE public.account_plan_history (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  account_id uuid NOT NULL,
  old_plan_key text,
  new_plan_key text NOT NULL,
  change_type text NOT NULL CHECK (change_type IN ('plan_upgraded', 'plan_downgraded')),
  changed_by text,
  reason text,
  changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX account_plan_history_account_idx ON public.account_plan_history (account_id, changed_at);

-- ---------------------------------------------------------------------------
-- Events and aggregates
-- ---------------------------------------------------------------------------
-- No foreign keys to profiles, files or jobs: the ledger outlives archived and
-- purged jobs and deleted files, and a deleted dependent's usage still counts
-- for the month it happened in.
CREATE TABLE public.usage_events (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  idempotency_key text NOT NULL UNIQUE CHECK (length(idempotency_key) BETWEEN 1 AND 200),
  event_type text NOT NULL CHECK (event_type IN (
    'shell_file_uploaded', 'shell_file_processed', 'ai_processing_started',
    'ai_processing_completed', 'page_extracted', 'storage_used',
    'plan_upgraded', 'plan_downgraded', 'limit_hit')),
  account_id uuid NOT NULL,
  profile_id uuid,
  shell_file_id uuid,
  job_id uuid,
  files bigint NOT NULL DEFAULT 0 CHECK (files >= 0),
  pages bigint NOT NULL DEFAULT 0 CHECK (pages >= 0),
  bytes bigint NOT NULL DEFAULT 0 CHECK (bytes >= 0),
  tokens bigint NOT NULL DEFAULT 0 CHECK (tokens >= 0),
  jobs bigint NOT NULL DEFAULT 0 CHECK (jobs >= 0),
  seconds bigint NOT NULL DEFAULT 0 CHECK (seconds >= 0),
  storage_delta_bytes bigint NOT NULL DEFAULT 0,
  metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
  period_start date NOT NULL,
  occurred_at timestamptz NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  CHECK (period_start = date_trunc('month', occurred_at AT TIME ZONE 'UTC')::date)
);
CREATE INDEX usage_events_account_period_idx ON public.usage_events (account_id, period_start);
CREATE INDEX usage_events_profile_idx ON public.usage_events (profile_id, occurred_at);
CREATE INDEX usage_events_period_idx ON public.usage_events (period_start);

-- Append-only: updates are refused; deletes only as part of a cascade
-- (pg_trigger_depth() > 1), which usage_events does not have today.
-- +goose StatementBegin
CREATE FUNCTION public.usage_events_append_only() RETURNS trigger
  LANGUAGE plpgsql
  SET search_path = ''
  AS $$
BEGIN
  IF TG_OP = 'DELETE' AND pg_catalog.pg_trigger_depth() > 1 THEN
    RETURN OLD;
  END IF;
  RAISE EXCEPTION USING ERRCODE = '55000',
    MESSAGE = pg_catalog.format('usage_events is append-only: %s refused', TG_OP),
    HINT = 'record a compensating event instead; aggregates are rebuilt with v3ctl usage rebuild';
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.usage_events_append_only() FROM PUBLIC, anon, authenticated;
CREATE TRIGGER usage_events_append_only BEFORE UPDATE OR DELETE ON public.usage_events
  FOR EACH ROW EXECUTE FUNCTION public.usage_events_append_only();
CREATE TRIGGER usage_events_no_truncate BEFORE TRUNCATE ON public.usage_events
  FOR EACH STATEMENT EXECUTE FUNCTION public.usage_events_append_only();

CREATE TABLE public.usage_monthly (
  profile_id uuid NOT NULL,
  period_start date NOT NULL CHECK (extract(day FROM period_start) = 1),
  account_id uuid NOT NULL,
  shell_files bigint NOT NULL DEFAULT 0,
  pages bigint NOT NULL DEFAULT 0,
  bytes_uploaded bigint NOT NULL DEFAULT 0,
  ai_tokens bigint NOT NULL DEFAULT 0,
  ai_jobs bigint NOT NULL DEFAULT 0,
  ai_seconds bigint NOT NULL DEFAULT 0,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (profile_id, period_start)
);
CREATE INDEX usage_monthly_account_period_idx ON public.usage_monthly (account_id, period_start);
CREATE INDEX usage_monthly_period_idx ON public.usage_monthly (period_start);

CREATE TABLE public.usage_storage (
  profile_id uuid PRIMARY KEY,
  account_id uuid NOT NULL,
  storage_bytes bigint NOT NULL DEFAULT 0 CHECK (storage_bytes >= 0),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_storage_account_idx ON public.usage_storage (account_id);

CREATE TABLE public.usage_storage_files (
  shell_file_id uuid PRIMARY KEY,
  profile_id uuid NOT NULL,
  account_id uuid NOT NULL,
  bytes bigint NOT NULL CHECK (bytes >= 0),
  counted boolean NOT NULL,
  changes integer NOT NULL DEFAULT 0,
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------------------
-- Internal helpers (not executable by any API role)
-- ---------------------------------------------------------------------------

-- The account a profile belongs to (NULL when the profile does not exist).
-- +goose StatementBegin
CREATE FUNCTION public.usage_profile_account(p_profile_id uuid) RETURNS uuid
  LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = ''
  AS $$
  SELECT up.account_owner_id FROM public.user_profiles up WHERE up.id = p_profile_id
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.usage_profile_account(uuid) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.usage_profile_account(uuid) TO service_role;

-- The plan an account is on: its account_plans row, else 'free'.
-- +goose StatementBegin
CREATE FUNCTION public.usage_account_plan(p_account_id uuid) RETURNS public.subscription_plans
  LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = ''
  AS $$
  SELECT sp.* FROM public.subscription_plans sp
  WHERE sp.plan_key = coalesce((SELECT ap.plan_key FROM public.account_plans ap WHERE ap.account_id = p_account_id), 'free')
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.usage_account_plan(uuid) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.usage_account_plan(uuid) TO service_role;

-- Account totals for one period: monthly flows plus the current storage level.
-- +goose StatementBegin
CREATE FUNCTION public.usage_account_totals(p_account_id uuid, p_period_start date,
  OUT shell_files bigint, OUT pages bigint, OUT ai_tokens bigint, OUT ai_jobs bigint,
  OUT ai_seconds bigint, OUT bytes_uploaded bigint, OUT storage_bytes bigint)
  LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = ''
  AS $$
  SELECT coalesce(sum(m.shell_files), 0)::bigint, coalesce(sum(m.pages), 0)::bigint,
         coalesce(sum(m.ai_tokens), 0)::bigint, coalesce(sum(m.ai_jobs), 0)::bigint,
         coalesce(sum(m.ai_seconds), 0)::bigint, coalesce(sum(m.bytes_uploaded), 0)::bigint,
         (SELECT coalesce(sum(s.storage_bytes), 0)::bigint FROM public.usage_storage s WHERE s.account_id = p_account_id)
  FROM public.usage_monthly m
  WHERE m.account_id = p_account_id AND m.period_start = p_period_start
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.usage_account_totals(uuid, date) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.usage_account_totals(uuid, date) TO service_role;

-- Serialises usage writes of one account (exact enforcement and limit_hit
-- detection across the account's profiles).
-- +goose StatementBegin
CREATE FUNCTION public.usage_lock_account(p_account_id uuid) RETURNS void
  LANGUAGE sql
  SET search_path = ''
  AS $$
  SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('v3ctl.usage:' || p_account_id::text, 0))
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.usage_lock_account(uuid) FROM PUBLIC, anon, authenticated;

-- usage_insert_event: the single write path. Inserts the event (nothing when
-- its idempotency key exists: returns NULL) and applies it to the aggregates
-- in the same transaction:
--   * usage_monthly when the event has a profile and any non-zero flow
--     quantity (files, pages, bytes, tokens, jobs, seconds);
--   * usage_storage when it has a profile and a non-zero storage delta.
-- rebuild_usage_aggregates / verify_usage_aggregates use the same rule.
-- +goose StatementBegin
CREATE FUNCTION public.usage_insert_event(
  p_key text,
  p_type text,
  p_account_id uuid,
  p_profile_id uuid,
  p_occurred_at timestamptz,
  p_files bigint DEFAULT 0,
  p_pages bigint DEFAULT 0,
  p_bytes bigint DEFAULT 0,
  p_tokens bigint DEFAULT 0,
  p_jobs bigint DEFAULT 0,
  p_seconds bigint DEFAULT 0,
  p_storage_delta bigint DEFAULT 0,
  p_shell_file_id uuid DEFAULT NULL,
  p_job_id uuid DEFAULT NULL,
  p_metadata jsonb DEFAULT '{}'::jsonb
) RETURNS bigint
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  v_id bigint;
  v_period date := date_trunc('month', p_occurred_at AT TIME ZONE 'UTC')::date;
BEGIN
  IF p_occurred_at IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'usage event: occurred_at is required';
  END IF;
  INSERT INTO public.usage_events (idempotency_key, event_type, account_id, profile_id, shell_file_id, job_id,
                                   files, pages, bytes, tokens, jobs, seconds, storage_delta_bytes,
                                   metadata, period_start, occurred_at)
  VALUES (p_key, p_type, p_account_id, p_profile_id, p_shell_file_id, p_job_id,
          p_files, p_pages, p_bytes, p_tokens, p_jobs, p_seconds, p_storage_delta,
          coalesce(p_metadata, '{}'::jsonb), v_period, p_occurred_at)
  ON CONFLICT (idempotency_key) DO NOTHING
  RETURNING id INTO v_id;
  IF v_id IS NULL THEN
    RETURN NULL;
  END IF;
  IF p_profile_id IS NOT NULL AND (p_files <> 0 OR p_pages <> 0 OR p_bytes <> 0 OR p_tokens <> 0
                                   OR p_jobs <> 0 OR p_seconds <> 0) THEN
    INSERT INTO public.usage_monthly AS m (profile_id, period_start, account_id, shell_files, pages,
                                           bytes_uploaded, ai_tokens, ai_jobs, ai_seconds)
    VALUES (p_profile_id, v_period, p_account_id, p_files, p_pages, p_bytes, p_tokens, p_jobs, p_seconds)
    ON CONFLICT (profile_id, period_start) DO UPDATE SET
      account_id = EXCLUDED.account_id,
      shell_files = m.shell_files + EXCLUDED.shell_files,
      pages = m.pages + EXCLUDED.pages,
      bytes_uploaded = m.bytes_uploaded + EXCLUDED.bytes_uploaded,
      ai_tokens = m.ai_tokens + EXCLUDED.ai_tokens,
      ai_jobs = m.ai_jobs + EXCLUDED.ai_jobs,
      ai_seconds = m.ai_seconds + EXCLUDED.ai_seconds,
      updated_at = pg_catalog.now();
  END IF;
  IF p_profile_id IS NOT NULL AND p_storage_delta < 0 THEN
    -- A release: the row exists (the bytes were counted before); the CHECK
    -- refuses a level below zero.
    UPDATE public.usage_storage s
      SET account_id = p_account_id, storage_bytes = s.storage_bytes + p_storage_delta, updated_at = pg_catalog.now()
      WHERE s.profile_id = p_profile_id;
    IF NOT FOUND THEN
      RAISE EXCEPTION USING ERRCODE = '23514',
        MESSAGE = pg_catalog.format('usage storage of profile %s would fall below zero', p_profile_id);
    END IF;
  ELSIF p_profile_id IS NOT NULL AND p_storage_delta > 0 THEN
    INSERT INTO public.usage_storage AS s (profile_id, account_id, storage_bytes)
    VALUES (p_profile_id, p_account_id, p_storage_delta)
    ON CONFLICT (profile_id) DO UPDATE SET
      account_id = EXCLUDED.account_id,
      storage_bytes = s.storage_bytes + EXCLUDED.storage_bytes,
      updated_at = pg_catalog.now();
  END IF;
  RETURN v_id;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.usage_insert_event(text, text, uuid, uuid, timestamptz, bigint, bigint, bigint,
  bigint, bigint, bigint, bigint, uuid, uuid, jsonb) FROM PUBLIC, anon, authenticated;

-- A plan's limits next to the given totals: always four rows (metric
-- shell_files, pages, ai_tokens, storage), each with the used amount and the
-- plan's limit_value (NULL = unlimited). Callers filter and compare.
-- +goose StatementBegin
CREATE FUNCTION public.usage_metrics(p_plan public.subscription_plans, p_shell_files bigint, p_pages bigint,
  p_ai_tokens bigint, p_storage_bytes bigint) RETURNS TABLE(metric text, used bigint, limit_value bigint)
  LANGUAGE sql IMMUTABLE
  SET search_path = ''
  AS $$
  SELECT * FROM (VALUES
    ('shell_files', p_shell_files, p_plan.monthly_shell_files_limit::bigint),
    ('pages', p_pages, p_plan.monthly_pages_limit::bigint),
    ('ai_tokens', p_ai_tokens, p_plan.monthly_ai_tokens_limit),
    ('storage', p_storage_bytes, p_plan.storage_limit_bytes)) AS v(metric, used, limit_value)
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.usage_metrics(public.subscription_plans, bigint, bigint, bigint, bigint)
  FROM PUBLIC, anon, authenticated;

-- Human name of a metric, for messages.
-- +goose StatementBegin
CREATE FUNCTION public.usage_metric_label(p_metric text) RETURNS text
  LANGUAGE sql IMMUTABLE
  SET search_path = ''
  AS $$
  SELECT CASE p_metric
    WHEN 'shell_files' THEN 'monthly shell files'
    WHEN 'pages' THEN 'monthly pages'
    WHEN 'ai_tokens' THEN 'monthly AI tokens'
    WHEN 'storage' THEN 'storage bytes'
    ELSE p_metric END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.usage_metric_label(text) FROM PUBLIC, anon, authenticated;

-- Refuse (V3L01) when adding the requested amounts to the account's totals
-- would exceed a limit. The caller holds the account lock.
-- +goose StatementBegin
CREATE FUNCTION public.usage_enforce(p_account_id uuid, p_period date, p_files bigint, p_pages bigint,
  p_tokens bigint, p_bytes bigint, p_what text) RETURNS void
  LANGUAGE plpgsql STABLE SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  v_plan public.subscription_plans;
  t record;
  m record;
  v_req bigint;
BEGIN
  v_plan := public.usage_account_plan(p_account_id);
  SELECT * INTO t FROM public.usage_account_totals(p_account_id, p_period);
  FOR m IN SELECT * FROM public.usage_metrics(v_plan, t.shell_files, t.pages, t.ai_tokens, t.storage_bytes) LOOP
    v_req := CASE m.metric WHEN 'shell_files' THEN p_files WHEN 'pages' THEN p_pages
                           WHEN 'ai_tokens' THEN p_tokens ELSE p_bytes END;
    IF m.limit_value IS NOT NULL AND v_req > 0 AND m.used + v_req > m.limit_value THEN
      RAISE EXCEPTION USING ERRCODE = 'V3L01',
        MESSAGE = pg_catalog.format('usage limit exceeded: %s would exceed the %s limit of plan %L (%s used of %s, requested %s)',
          p_what, public.usage_metric_label(m.metric), v_plan.plan_key, m.used, m.limit_value, v_req),
        DETAIL = 'limit=' || m.metric,
        HINT = pg_catalog.format('upgrade the account''s plan (v3ctl usage set-plan <account> <plan>) or wait for the next period starting %s',
          (p_period + interval '1 month')::date);
    END IF;
  END LOOP;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.usage_enforce(uuid, date, bigint, bigint, bigint, bigint, text) FROM PUBLIC, anon, authenticated;

-- Record limit_hit events at 80 % and 100 % of each given metric's limit,
-- once per account, metric, period and threshold (idempotency key
-- 'limit_hit:<account>:<metric>:<YYYY-MM>:<80|100>'). Returns the thresholds
-- newly hit as '<metric>:<threshold>'. The caller holds the account lock.
-- +goose StatementBegin
CREATE FUNCTION public.usage_record_limit_hits(p_account_id uuid, p_profile_id uuid, p_occurred_at timestamptz,
  p_metrics text[]) RETURNS text[]
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  v_period date := date_trunc('month', p_occurred_at AT TIME ZONE 'UTC')::date;
  v_plan public.subscription_plans;
  t record;
  m record;
  v_threshold int;
  v_hits text[] := '{}';
BEGIN
  v_plan := public.usage_account_plan(p_account_id);
  SELECT * INTO t FROM public.usage_account_totals(p_account_id, v_period);
  FOR m IN SELECT * FROM public.usage_metrics(v_plan, t.shell_files, t.pages, t.ai_tokens, t.storage_bytes)
           WHERE metric = ANY (p_metrics) AND limit_value IS NOT NULL LOOP
    FOREACH v_threshold IN ARRAY ARRAY[80, 100] LOOP
      IF m.used > 0 AND m.used::numeric * 100 >= m.limit_value::numeric * v_threshold THEN
        IF public.usage_insert_event(
             pg_catalog.format('limit_hit:%s:%s:%s:%s', p_account_id, m.metric, pg_catalog.to_char(v_period, 'YYYY-MM'), v_threshold),
             'limit_hit', p_account_id, p_profile_id, p_occurred_at,
             p_metadata => pg_catalog.jsonb_build_object('metric', m.metric, 'threshold', v_threshold,
               'used', m.used, 'limit', m.limit_value, 'plan_type', v_plan.plan_key)) IS NOT NULL THEN
          v_hits := v_hits || (m.metric || ':' || v_threshold);
        END IF;
      END IF;
    END LOOP;
  END LOOP;
  RETURN v_hits;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.usage_record_limit_hits(uuid, uuid, timestamptz, text[]) FROM PUBLIC, anon, authenticated;

-- Metrics over their limit for an account and period (NULL limit: never).
-- +goose StatementBegin
CREATE FUNCTION public.usage_over_limits(p_account_id uuid, p_period date) RETURNS text[]
  LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = ''
  AS $$
  SELECT coalesce(pg_catalog.array_agg(m.metric ORDER BY m.metric), '{}')
  FROM public.usage_account_totals(p_account_id, p_period) t,
       public.usage_metrics(public.usage_account_plan(p_account_id), t.shell_files, t.pages, t.ai_tokens, t.storage_bytes) m
  WHERE m.limit_value IS NOT NULL AND m.used > m.limit_value
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.usage_over_limits(uuid, date) FROM PUBLIC, anon, authenticated;

-- ---------------------------------------------------------------------------
-- Tracking (system only)
-- ---------------------------------------------------------------------------

-- track_shell_file_upload_usage: counts one upload (1 file, its pages and
-- exact bytes) and adds its bytes to the storage level. Idempotent per shell
-- file (key 'upload:<shell_file_id>'): a retry returns the first result with
-- duplicate=true and counts nothing. With billing enabled an upload that
-- would exceed a limit is refused (V3L01) and nothing is written; with billing
-- disabled it is recorded and over_limit is reported. With usage tracking
-- disabled nothing is recorded ({"recorded": false}).
-- +goose StatementBegin
CREATE FUNCTION public.track_shell_file_upload_usage(
  p_profile_id uuid,
  p_shell_file_id uuid,
  p_file_size_bytes bigint,
  p_estimated_pages integer,
  p_occurred_at timestamptz DEFAULT now()
) RETURNS jsonb
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  v_account uuid;
  v_file record;
  v_pages bigint;
  v_key text := 'upload:' || p_shell_file_id::text;
  v_existing record;
  v_id bigint;
  v_counted boolean;
  v_period date := date_trunc('month', p_occurred_at AT TIME ZONE 'UTC')::date;
  v_hits text[];
  v_over text[];
BEGIN
  IF p_profile_id IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'p_profile_id is required';
  END IF;
  IF p_shell_file_id IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'p_shell_file_id is required';
  END IF;
  IF p_file_size_bytes IS NULL OR p_file_size_bytes < 0 THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('p_file_size_bytes must be a non-negative number of bytes, got %s', coalesce(p_file_size_bytes::text, 'NULL'));
  END IF;
  IF p_estimated_pages IS NOT NULL AND p_estimated_pages < 0 THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('p_estimated_pages must be >= 0, got %s', p_estimated_pages);
  END IF;
  IF p_occurred_at IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'p_occurred_at must not be NULL';
  END IF;
  v_account := public.usage_profile_account(p_profile_id);
  IF v_account IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('profile %s not found', p_profile_id),
      HINT = 'pass a user_profiles id (not an account id)';
  END IF;
  -- FOR SHARE: a concurrent DELETE or status change of the file waits until
  -- this transaction ends, so its usage_shell_file_storage trigger sees the
  -- usage_storage_files row written here and releases the bytes; a delete
  -- that committed first leaves no row (not found below).
  SELECT sf.patient_id, sf.status, sf.page_count INTO v_file FROM public.shell_files sf WHERE sf.id = p_shell_file_id
    FOR SHARE;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('shell file %s not found', p_shell_file_id),
      HINT = 'insert the shell_files row before tracking its upload';
  END IF;
  IF v_file.patient_id <> p_profile_id THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('shell file %s belongs to another profile than %s', p_shell_file_id, p_profile_id);
  END IF;
  IF public.get_system_config('features.usage_tracking_enabled', 'true') <> 'true'::jsonb THEN
    RETURN pg_catalog.jsonb_build_object('recorded', false, 'duplicate', false, 'reason', 'usage_tracking_disabled');
  END IF;
  v_pages := coalesce(p_estimated_pages, 0);

  PERFORM public.usage_lock_account(v_account);
  SELECT e.id, e.period_start, e.files, e.pages, e.bytes INTO v_existing
    FROM public.usage_events e WHERE e.idempotency_key = v_key;
  IF FOUND THEN
    RETURN pg_catalog.jsonb_build_object('recorded', true, 'duplicate', true, 'event_id', v_existing.id,
      'account_id', v_account, 'profile_id', p_profile_id, 'period_start', v_existing.period_start,
      'files', v_existing.files, 'pages', v_existing.pages, 'bytes', v_existing.bytes,
      'over_limit', pg_catalog.cardinality(public.usage_over_limits(v_account, v_existing.period_start)) > 0,
      'over_limits', pg_catalog.to_jsonb(public.usage_over_limits(v_account, v_existing.period_start)),
      'limit_hits', '[]'::jsonb);
  END IF;

  v_counted := v_file.status <> 'archived';
  IF public.get_system_config('features.billing_enabled', 'false') = 'true'::jsonb THEN
    PERFORM public.usage_enforce(v_account, v_period, 1, v_pages, 0,
      CASE WHEN v_counted THEN p_file_size_bytes ELSE 0 END, 'this upload');
  END IF;

  v_id := public.usage_insert_event(v_key, 'shell_file_uploaded', v_account, p_profile_id, p_occurred_at,
    p_files => 1, p_pages => v_pages, p_bytes => p_file_size_bytes,
    p_storage_delta => CASE WHEN v_counted THEN p_file_size_bytes ELSE 0 END,
    p_shell_file_id => p_shell_file_id);
  IF v_id IS NULL THEN
    -- Lost a race with the same key (not possible under the account lock;
    -- kept so a duplicate can never count twice).
    RETURN pg_catalog.jsonb_build_object('recorded', true, 'duplicate', true,
      'event_id', (SELECT e.id FROM public.usage_events e WHERE e.idempotency_key = v_key),
      'account_id', v_account, 'profile_id', p_profile_id, 'limit_hits', '[]'::jsonb);
  END IF;
  INSERT INTO public.usage_storage_files (shell_file_id, profile_id, account_id, bytes, counted)
  VALUES (p_shell_file_id, p_profile_id, v_account, p_file_size_bytes, v_counted)
  ON CONFLICT (shell_file_id) DO NOTHING;

  v_hits := public.usage_record_limit_hits(v_account, p_profile_id, p_occurred_at,
    ARRAY['shell_files', 'pages', 'storage']);
  v_over := public.usage_over_limits(v_account, v_period);
  RETURN pg_catalog.jsonb_build_object('recorded', true, 'duplicate', false, 'event_id', v_id,
    'account_id', v_account, 'profile_id', p_profile_id, 'period_start', v_period,
    'files', 1, 'pages', v_pages, 'bytes', p_file_size_bytes,
    'over_limit', pg_catalog.cardinality(v_over) > 0, 'over_limits', pg_catalog.to_jsonb(v_over),
    'limit_hits', pg_catalog.to_jsonb(v_hits));
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.track_shell_file_upload_usage(uuid, uuid, bigint, integer, timestamptz)
  FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.track_shell_file_upload_usage(uuid, uuid, bigint, integer, timestamptz) TO service_role;

-- track_ai_processing_usage: counts one AI job (its tokens, 1 job, its
-- seconds). Idempotent per job (key 'ai:<job_id>'). The work is already done,
-- so it is always recorded (limits are enforced when the job is enqueued);
-- over_limit is reported. No foreign key to job_queue: jobs are archived and
-- purged. A job found in job_queue or job_queue_archive must belong to the
-- profile (its patient_id, or when that is NULL its payload's patient_id),
-- else 22023; a job id found in neither (purged, or an external caller's own
-- id) is accepted.
-- +goose StatementBegin
CREATE FUNCTION public.track_ai_processing_usage(
  p_profile_id uuid,
  p_job_id uuid,
  p_tokens_used integer,
  p_processing_seconds integer,
  p_occurred_at timestamptz DEFAULT now()
) RETURNS jsonb
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  v_account uuid;
  v_key text := 'ai:' || p_job_id::text;
  v_job record;
  v_job_profile text;
  v_existing record;
  v_id bigint;
  v_period date := date_trunc('month', p_occurred_at AT TIME ZONE 'UTC')::date;
  v_hits text[];
  v_over text[];
BEGIN
  IF p_profile_id IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'p_profile_id is required';
  END IF;
  IF p_job_id IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'p_job_id is required';
  END IF;
  IF p_tokens_used IS NULL OR p_tokens_used < 0 THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('p_tokens_used must be a non-negative integer, got %s', coalesce(p_tokens_used::text, 'NULL'));
  END IF;
  IF p_processing_seconds IS NOT NULL AND p_processing_seconds < 0 THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('p_processing_seconds must be >= 0, got %s', p_processing_seconds);
  END IF;
  IF p_occurred_at IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'p_occurred_at must not be NULL';
  END IF;
  v_account := public.usage_profile_account(p_profile_id);
  IF v_account IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('profile %s not found', p_profile_id),
      HINT = 'pass a user_profiles id (not an account id)';
  END IF;
  SELECT j.patient_id, j.job_payload INTO v_job FROM public.job_queue_all j WHERE j.id = p_job_id LIMIT 1;
  IF FOUND THEN
    v_job_profile := coalesce(v_job.patient_id::text,
      v_job.job_payload ->> 'patient_id');
    IF v_job_profile IS NULL THEN
      RAISE EXCEPTION USING ERRCODE = '22023',
        MESSAGE = pg_catalog.format('job %s has no profile (no patient_id); its usage cannot be counted for profile %s',
          p_job_id, p_profile_id);
    END IF;
    IF pg_catalog.lower(pg_catalog.btrim(v_job_profile)) IS DISTINCT FROM p_profile_id::text THEN
      RAISE EXCEPTION USING ERRCODE = '22023',
        MESSAGE = pg_catalog.format('job %s belongs to another profile than %s', p_job_id, p_profile_id),
        HINT = 'pass the job''s own profile (job_queue patient_id)';
    END IF;
  END IF;
  IF public.get_system_config('features.usage_tracking_enabled', 'true') <> 'true'::jsonb THEN
    RETURN pg_catalog.jsonb_build_object('recorded', false, 'duplicate', false, 'reason', 'usage_tracking_disabled');
  END IF;

  PERFORM public.usage_lock_account(v_account);
  SELECT e.id, e.period_start, e.tokens, e.seconds INTO v_existing
    FROM public.usage_events e WHERE e.idempotency_key = v_key;
  IF FOUND THEN
    RETURN pg_catalog.jsonb_build_object('recorded', true, 'duplicate', true, 'event_id', v_existing.id,
      'account_id', v_account, 'profile_id', p_profile_id, 'period_start', v_existing.period_start,
      'tokens', v_existing.tokens, 'seconds', v_existing.seconds,
      'over_limit', pg_catalog.cardinality(public.usage_over_limits(v_account, v_existing.period_start)) > 0,
      'over_limits', pg_catalog.to_jsonb(public.usage_over_limits(v_account, v_existing.period_start)),
      'limit_hits', '[]'::jsonb);
  END IF;

  v_id := public.usage_insert_event(v_key, 'ai_processing_completed', v_account, p_profile_id, p_occurred_at,
    p_tokens => p_tokens_used, p_jobs => 1, p_seconds => coalesce(p_processing_seconds, 0), p_job_id => p_job_id);
  IF v_id IS NULL THEN
    RETURN pg_catalog.jsonb_build_object('recorded', true, 'duplicate', true,
      'event_id', (SELECT e.id FROM public.usage_events e WHERE e.idempotency_key = v_key),
      'account_id', v_account, 'profile_id', p_profile_id, 'limit_hits', '[]'::jsonb);
  END IF;
  v_hits := public.usage_record_limit_hits(v_account, p_profile_id, p_occurred_at, ARRAY['ai_tokens']);
  v_over := public.usage_over_limits(v_account, v_period);
  RETURN pg_catalog.jsonb_build_object('recorded', true, 'duplicate', false, 'event_id', v_id,
    'account_id', v_account, 'profile_id', p_profile_id, 'period_start', v_period,
    'tokens', p_tokens_used, 'seconds', coalesce(p_processing_seconds, 0),
    'over_limit', pg_catalog.cardinality(v_over) > 0, 'over_limits', pg_catalog.to_jsonb(v_over),
    'limit_hits', pg_catalog.to_jsonb(v_hits));
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.track_ai_processing_usage(uuid, uuid, integer, integer, timestamptz)
  FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.track_ai_processing_usage(uuid, uuid, integer, integer, timestamptz) TO service_role;

-- check_upload_allowed: for the Edge Function before it stores a file.
-- Returns {"allowed", "enforced", "exceeded":[{limit, used, limit_value,
-- requested}], "message"}; allowed is false only when billing is enabled and
-- the upload would exceed a limit. Writes nothing.
-- +goose StatementBegin
CREATE FUNCTION public.check_upload_allowed(
  p_profile_id uuid,
  p_file_size_bytes bigint,
  p_estimated_pages integer DEFAULT 0,
  p_at timestamptz DEFAULT now()
) RETURNS jsonb
  LANGUAGE plpgsql STABLE SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  v_account uuid;
  v_period date := date_trunc('month', p_at AT TIME ZONE 'UTC')::date;
  v_plan public.subscription_plans;
  v_enforced boolean;
  v_exceeded jsonb := '[]'::jsonb;
  v_req bigint;
  t record;
  m record;
BEGIN
  IF p_profile_id IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'p_profile_id is required';
  END IF;
  IF p_file_size_bytes IS NULL OR p_file_size_bytes < 0 THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('p_file_size_bytes must be a non-negative number of bytes, got %s', coalesce(p_file_size_bytes::text, 'NULL'));
  END IF;
  IF p_estimated_pages IS NOT NULL AND p_estimated_pages < 0 THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('p_estimated_pages must be >= 0, got %s', p_estimated_pages);
  END IF;
  v_account := public.usage_profile_account(p_profile_id);
  IF v_account IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = pg_catalog.format('profile %s not found', p_profile_id);
  END IF;
  v_enforced := public.get_system_config('features.billing_enabled', 'false') = 'true'::jsonb
            AND public.get_system_config('features.usage_tracking_enabled', 'true') = 'true'::jsonb;
  v_plan := public.usage_account_plan(v_account);
  SELECT * INTO t FROM public.usage_account_totals(v_account, v_period);
  FOR m IN SELECT * FROM public.usage_metrics(v_plan, t.shell_files, t.pages, t.ai_tokens, t.storage_bytes)
           WHERE limit_value IS NOT NULL AND metric <> 'ai_tokens' LOOP
    v_req := CASE m.metric WHEN 'shell_files' THEN 1 WHEN 'pages' THEN coalesce(p_estimated_pages, 0)
                           ELSE p_file_size_bytes END;
    IF v_req > 0 AND m.used + v_req > m.limit_value THEN
      v_exceeded := v_exceeded || pg_catalog.jsonb_build_object('limit', m.metric, 'used', m.used,
        'limit_value', m.limit_value, 'requested', v_req);
    END IF;
  END LOOP;
  RETURN pg_catalog.jsonb_build_object(
    'allowed', NOT (v_enforced AND pg_catalog.jsonb_array_length(v_exceeded) > 0),
    'enforced', v_enforced,
    'plan_type', v_plan.plan_key,
    'exceeded', v_exceeded,
    'message', CASE WHEN pg_catalog.jsonb_array_length(v_exceeded) = 0 THEN NULL
      ELSE pg_catalog.format('this upload would exceed the %s limit of plan %L',
             public.usage_metric_label(v_exceeded -> 0 ->> 'limit'), v_plan.plan_key) END);
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.check_upload_allowed(uuid, bigint, integer, timestamptz) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.check_upload_allowed(uuid, bigint, integer, timestamptz) TO service_role;

-- Storage level follows the file: archiving or deleting a counted shell file
-- releases its bytes, un-archiving counts them again. Each change is a
-- 'storage_used' event (key 'storage:<file>:<n>') with a signed delta, so the
-- level can be rebuilt from the ledger. Releases are recorded even when usage
-- tracking is off, so the level never keeps bytes that are gone.
-- +goose StatementBegin
CREATE FUNCTION public.usage_shell_file_storage() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  r public.usage_storage_files;
  v_counted boolean;
BEGIN
  SELECT * INTO r FROM public.usage_storage_files WHERE shell_file_id = OLD.id FOR UPDATE;
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  v_counted := TG_OP = 'UPDATE' AND NEW.status <> 'archived';
  IF r.counted = v_counted THEN
    RETURN NULL;
  END IF;
  UPDATE public.usage_storage_files
    SET counted = v_counted, changes = changes + 1, updated_at = pg_catalog.now()
    WHERE shell_file_id = OLD.id;
  PERFORM public.usage_insert_event(
    pg_catalog.format('storage:%s:%s', OLD.id, r.changes + 1), 'storage_used', r.account_id, r.profile_id,
    pg_catalog.now(),
    p_storage_delta => CASE WHEN v_counted THEN r.bytes ELSE -r.bytes END,
    p_shell_file_id => OLD.id,
    p_metadata => pg_catalog.jsonb_build_object('change',
      CASE WHEN TG_OP = 'DELETE' THEN 'deleted' WHEN v_counted THEN 'restored' ELSE 'archived' END));
  RETURN NULL;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.usage_shell_file_storage() FROM PUBLIC, anon, authenticated;
CREATE TRIGGER shell_files_usage_storage_update AFTER UPDATE OF status ON public.shell_files
  FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
  EXECUTE FUNCTION public.usage_shell_file_storage();
CREATE TRIGGER shell_files_usage_storage_delete AFTER DELETE ON public.shell_files
  FOR EACH ROW EXECUTE FUNCTION public.usage_shell_file_storage();

-- ---------------------------------------------------------------------------
-- Status (frontend and system)
-- ---------------------------------------------------------------------------

-- usage_account_status: the get_user_usage_status document for an account.
-- System only (no access check). Percentages have one decimal; a NULL limit
-- gives limit null and percentage null and is never over the limit.
-- over_limit: some metric is above its limit; upgrade_required: some metric
-- has reached its limit (the next upload or AI job would be refused when
-- billing is enabled).
-- +goose StatementBegin
CREATE FUNCTION public.usage_account_status(p_account_id uuid, p_at timestamptz DEFAULT now()) RETURNS jsonb
  LANGUAGE plpgsql STABLE SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  v_at timestamptz := coalesce(p_at, pg_catalog.now());
  v_period date := date_trunc('month', v_at AT TIME ZONE 'UTC')::date;
  v_plan public.subscription_plans;
  t record;
  v_over boolean := false;
  v_reached boolean := false;
  v_usage jsonb := '{}'::jsonb;
  m record;
  v_pct numeric;
BEGIN
  v_plan := public.usage_account_plan(p_account_id);
  SELECT * INTO t FROM public.usage_account_totals(p_account_id, v_period);
  FOR m IN SELECT * FROM public.usage_metrics(v_plan, t.shell_files, t.pages, t.ai_tokens, t.storage_bytes) LOOP
    v_pct := CASE WHEN m.limit_value IS NULL THEN NULL
                  WHEN m.limit_value = 0 THEN CASE WHEN m.used > 0 THEN 100 ELSE 0 END
                  ELSE round(m.used::numeric * 100 / m.limit_value, 1) END;
    IF m.limit_value IS NOT NULL THEN
      v_over := v_over OR m.used > m.limit_value;
      v_reached := v_reached OR m.used >= m.limit_value;
    END IF;
    IF m.metric = 'storage' THEN
      v_usage := v_usage || pg_catalog.jsonb_build_object('storage', pg_catalog.jsonb_build_object(
        'used_mb', round(m.used::numeric / 1048576, 2),
        'limit_mb', CASE WHEN m.limit_value IS NULL THEN NULL
                         WHEN m.limit_value % 1048576 = 0 THEN (m.limit_value / 1048576)::numeric
                         ELSE round(m.limit_value::numeric / 1048576, 2) END,
        'percentage', v_pct));
    ELSE
      v_usage := v_usage || pg_catalog.jsonb_build_object(m.metric, pg_catalog.jsonb_build_object(
        'used', m.used, 'limit', m.limit_value, 'percentage', v_pct));
    END IF;
  END LOOP;
  RETURN pg_catalog.jsonb_build_object(
    'current_period', pg_catalog.jsonb_build_object(
      'start', pg_catalog.to_char(v_period, 'YYYY-MM-DD"T"00:00:00"Z"'),
      'end', pg_catalog.to_char((v_period + interval '1 month')::date, 'YYYY-MM-DD"T"00:00:00"Z"')),
    'usage', v_usage,
    'status', pg_catalog.jsonb_build_object(
      'plan_type', v_plan.plan_key,
      'over_limit', v_over,
      'upgrade_required', v_reached));
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.usage_account_status(uuid, timestamptz) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.usage_account_status(uuid, timestamptz) TO service_role;

-- get_user_usage_status: the account totals of the profile's account for the
-- current period. A signed-in user (authenticated) must have access to the
-- profile (has_profile_access); anon is refused; service-level callers
-- (service_role, or a direct connection without SET ROLE) may read any
-- profile. Refusals are SQLSTATE 42501. Writes nothing.
-- +goose StatementBegin
CREATE FUNCTION public.get_user_usage_status(p_profile_id uuid, p_at timestamptz DEFAULT NULL) RETURNS jsonb
  LANGUAGE plpgsql STABLE SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  v_set_role text := coalesce(pg_catalog.current_setting('role', true), 'none');
  v_claim_role text := nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb ->> 'role';
  v_account uuid;
BEGIN
  IF v_set_role = 'anon' OR v_claim_role = 'anon' THEN
    RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 'permission denied: sign in to read usage';
  END IF;
  IF v_set_role = 'authenticated' OR v_claim_role = 'authenticated'
     OR (v_set_role NOT IN ('service_role', 'none') AND v_claim_role IS DISTINCT FROM 'service_role') THEN
    IF NOT coalesce(public.has_profile_access(auth.uid(), p_profile_id), false) THEN
      RAISE EXCEPTION USING ERRCODE = '42501',
        MESSAGE = 'permission denied: no access to this profile';
    END IF;
  END IF;
  IF p_profile_id IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'p_profile_id is required';
  END IF;
  v_account := public.usage_profile_account(p_profile_id);
  IF v_account IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = pg_catalog.format('profile %s not found', p_profile_id);
  END IF;
  RETURN public.usage_account_status(v_account, coalesce(p_at, pg_catalog.now()));
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.get_user_usage_status(uuid, timestamptz) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.get_user_usage_status(uuid, timestamptz) TO authenticated, service_role;

-- ---------------------------------------------------------------------------
-- Enqueue enforcement (replaces the queue migration's no-op hook)
-- ---------------------------------------------------------------------------
-- With billing enabled, an ai_processing job for a profile whose account has
-- reached its monthly AI token limit (or would pass it with the payload's
-- optional estimated_tokens) is refused with V3L01. Other job types, jobs
-- without a known profile, and everything when billing or tracking is off
-- pass. Grants are kept from the queue migration (service_role only).
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.usage_enforce_enqueue(p_job_type text, p_patient_id uuid, p_payload jsonb) RETURNS void
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  v_profile uuid := p_patient_id;
  v_account uuid;
  v_period date := date_trunc('month', pg_catalog.now() AT TIME ZONE 'UTC')::date;
  v_est bigint := 0;
  v_plan public.subscription_plans;
  t record;
BEGIN
  IF p_job_type IS DISTINCT FROM 'ai_processing'
     OR public.get_system_config('features.billing_enabled', 'false') <> 'true'::jsonb
     OR public.get_system_config('features.usage_tracking_enabled', 'true') <> 'true'::jsonb THEN
    RETURN;
  END IF;
  IF v_profile IS NULL AND p_payload ? 'patient_id' AND (p_payload ->> 'patient_id') ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
    v_profile := (p_payload ->> 'patient_id')::uuid;
  END IF;
  v_account := public.usage_profile_account(v_profile);
  IF v_account IS NULL THEN
    RETURN;
  END IF;
  IF p_payload ? 'estimated_tokens' AND pg_catalog.jsonb_typeof(p_payload -> 'estimated_tokens') = 'number' THEN
    v_est := greatest((p_payload ->> 'estimated_tokens')::numeric, 0)::bigint;
  END IF;
  v_plan := public.usage_account_plan(v_account);
  IF v_plan.monthly_ai_tokens_limit IS NULL THEN
    RETURN;
  END IF;
  SELECT * INTO t FROM public.usage_account_totals(v_account, v_period);
  IF t.ai_tokens >= v_plan.monthly_ai_tokens_limit OR t.ai_tokens + v_est > v_plan.monthly_ai_tokens_limit THEN
    RAISE EXCEPTION USING ERRCODE = 'V3L01',
      MESSAGE = pg_catalog.format('usage limit exceeded: this AI job would exceed the %s limit of plan %L (%s used of %s%s)',
        public.usage_metric_label('ai_tokens'), v_plan.plan_key, t.ai_tokens, v_plan.monthly_ai_tokens_limit,
        CASE WHEN v_est > 0 THEN ', estimated ' || v_est ELSE '' END),
      DETAIL = 'limit=ai_tokens',
      HINT = pg_catalog.format('upgrade the account''s plan (v3ctl usage set-plan <account> <plan>) or wait for the next period starting %s',
        (v_period + interval '1 month')::date);
  END IF;
END
$$;
-- +goose StatementEnd

-- ---------------------------------------------------------------------------
-- Administration: plans, plan assignment, rebuild, verify, report
-- ---------------------------------------------------------------------------

-- Validates a non-negative integer limit given as JSON (null = unlimited).
-- +goose StatementBegin
CREATE FUNCTION public.usage_limit_value(p_field text, p_value jsonb, p_nullable boolean DEFAULT true) RETURNS bigint
  LANGUAGE plpgsql IMMUTABLE
  SET search_path = ''
  AS $$
BEGIN
  IF p_value IS NULL OR pg_catalog.jsonb_typeof(p_value) = 'null' THEN
    IF p_nullable THEN
      RETURN NULL;
    END IF;
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = pg_catalog.format('%s is required', p_field);
  END IF;
  IF pg_catalog.jsonb_typeof(p_value) <> 'number' OR (p_value #>> '{}')::numeric < 0
     OR (p_value #>> '{}')::numeric <> pg_catalog.trunc((p_value #>> '{}')::numeric) THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('%s must be a non-negative integer%s, got %s', p_field,
        CASE WHEN p_nullable THEN ' or null (unlimited)' ELSE '' END, p_value::text);
  END IF;
  RETURN (p_value #>> '{}')::bigint;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.usage_limit_value(text, jsonb, boolean) FROM PUBLIC, anon, authenticated;

-- upsert_subscription_plan: create (p_create) or update a plan from a JSON
-- object of fields: display_name, monthly_shell_files_limit,
-- monthly_pages_limit, monthly_ai_tokens_limit, storage_limit_bytes (null =
-- unlimited), price_cents, currency, tier_rank. Create requires price_cents
-- and all four limits (22023 names the missing ones); update changes only the
-- fields given. Returns
-- {"plan", "old", "changed"}; audited (table subscription_plans).
-- +goose StatementBegin
CREATE FUNCTION public.upsert_subscription_plan(
  p_plan_key text,
  p_fields jsonb,
  p_create boolean,
  p_actor text DEFAULT NULL,
  p_reason text DEFAULT NULL
) RETURNS jsonb
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  v_valid text[] := ARRAY['display_name', 'monthly_shell_files_limit', 'monthly_pages_limit',
    'monthly_ai_tokens_limit', 'storage_limit_bytes', 'price_cents', 'currency', 'tier_rank'];
  v_key text;
  v_old public.subscription_plans;
  v_new public.subscription_plans;
  v_int_max bigint := 2147483647;
  v_missing text[];
BEGIN
  IF p_plan_key IS NULL OR p_plan_key !~ '^[a-z][a-z0-9_]{0,39}$' THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('invalid plan key %L', p_plan_key),
      HINT = 'lower-case letters, digits and _, starting with a letter, at most 40 characters';
  END IF;
  IF p_fields IS NULL OR pg_catalog.jsonb_typeof(p_fields) <> 'object' THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'plan fields must be a JSON object';
  END IF;
  FOR v_key IN SELECT pg_catalog.jsonb_object_keys(p_fields) LOOP
    IF NOT v_key = ANY (v_valid) THEN
      RAISE EXCEPTION USING ERRCODE = '22023',
        MESSAGE = pg_catalog.format('unknown plan field %L', v_key),
        HINT = 'valid fields: ' || pg_catalog.array_to_string(v_valid, ', ');
    END IF;
  END LOOP;
  SELECT * INTO v_old FROM public.subscription_plans WHERE plan_key = p_plan_key FOR UPDATE;
  IF p_create AND FOUND THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = pg_catalog.format('plan %L already exists', p_plan_key),
      HINT = 'use plans update to change it';
  END IF;
  IF NOT p_create AND NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = pg_catalog.format('plan %L not found', p_plan_key),
      HINT = 'valid plans: ' || (SELECT pg_catalog.string_agg(plan_key, ', ' ORDER BY tier_rank, plan_key) FROM public.subscription_plans);
  END IF;
  IF p_create THEN
    IF NOT (p_fields ? 'price_cents') THEN
      RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'price_cents is required to create a plan';
    END IF;
    -- Every limit must be given on create; JSON null means unlimited, so an
    -- omitted limit never becomes unlimited by accident.
    SELECT pg_catalog.array_agg(k ORDER BY o) INTO v_missing
      FROM pg_catalog.unnest(ARRAY['monthly_shell_files_limit', 'monthly_pages_limit', 'monthly_ai_tokens_limit',
                                   'storage_limit_bytes']) WITH ORDINALITY AS l(k, o)
      WHERE NOT (p_fields ? k);
    IF v_missing IS NOT NULL THEN
      RAISE EXCEPTION USING ERRCODE = '22023',
        MESSAGE = pg_catalog.format('missing plan limit%s %s: every limit is required to create a plan',
          CASE WHEN pg_catalog.cardinality(v_missing) > 1 THEN 's' ELSE '' END,
          pg_catalog.array_to_string(v_missing, ', ')),
        HINT = 'give each limit as a non-negative integer, or null for unlimited';
    END IF;
    v_new.plan_key := p_plan_key;
    v_new.display_name := coalesce(p_fields ->> 'display_name', pg_catalog.initcap(pg_catalog.replace(p_plan_key, '_', ' ')));
    v_new.currency := 'USD';
    v_new.tier_rank := (SELECT coalesce(max(tier_rank), 0) + 10 FROM public.subscription_plans);
  ELSE
    v_new := v_old;
  END IF;
  IF p_fields ? 'display_name' THEN
    IF pg_catalog.jsonb_typeof(p_fields -> 'display_name') <> 'string' OR pg_catalog.btrim(p_fields ->> 'display_name') = '' THEN
      RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'display_name must be a non-empty string';
    END IF;
    v_new.display_name := p_fields ->> 'display_name';
  END IF;
  IF p_fields ? 'monthly_shell_files_limit' THEN
    v_new.monthly_shell_files_limit := public.usage_limit_value('monthly_shell_files_limit', p_fields -> 'monthly_shell_files_limit');
    IF v_new.monthly_shell_files_limit > v_int_max THEN
      RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'monthly_shell_files_limit is too large';
    END IF;
  END IF;
  IF p_fields ? 'monthly_pages_limit' THEN
    v_new.monthly_pages_limit := public.usage_limit_value('monthly_pages_limit', p_fields -> 'monthly_pages_limit');
    IF v_new.monthly_pages_limit > v_int_max THEN
      RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'monthly_pages_limit is too large';
    END IF;
  END IF;
  IF p_fields ? 'monthly_ai_tokens_limit' THEN
    v_new.monthly_ai_tokens_limit := public.usage_limit_value('monthly_ai_tokens_limit', p_fields -> 'monthly_ai_tokens_limit');
  END IF;
  IF p_fields ? 'storage_limit_bytes' THEN
    v_new.storage_limit_bytes := public.usage_limit_value('storage_limit_bytes', p_fields -> 'storage_limit_bytes');
  END IF;
  IF p_fields ? 'price_cents' THEN
    v_new.price_cents := public.usage_limit_value('price_cents', p_fields -> 'price_cents', false);
  END IF;
  IF p_fields ? 'currency' THEN
    IF pg_catalog.jsonb_typeof(p_fields -> 'currency') <> 'string' OR (p_fields ->> 'currency') !~ '^[A-Z]{3}$' THEN
      RAISE EXCEPTION USING ERRCODE = '22023',
        MESSAGE = pg_catalog.format('currency must be a 3-letter ISO 4217 code such as USD, got %s', (p_fields -> 'currency')::text);
    END IF;
    v_new.currency := p_fields ->> 'currency';
  END IF;
  IF p_fields ? 'tier_rank' THEN
    IF pg_catalog.jsonb_typeof(p_fields -> 'tier_rank') <> 'number'
       OR (p_fields ->> 'tier_rank')::numeric <> pg_catalog.trunc((p_fields ->> 'tier_rank')::numeric) THEN
      RAISE EXCEPTION USING ERRCODE = '22023',
        MESSAGE = pg_catalog.format('tier_rank must be an integer, got %s', (p_fields -> 'tier_rank')::text);
    END IF;
    v_new.tier_rank := (p_fields ->> 'tier_rank')::int;
  END IF;

  IF p_create THEN
    INSERT INTO public.subscription_plans (plan_key, display_name, monthly_shell_files_limit, monthly_pages_limit,
      monthly_ai_tokens_limit, storage_limit_bytes, price_cents, currency, tier_rank)
    VALUES (v_new.plan_key, v_new.display_name, v_new.monthly_shell_files_limit, v_new.monthly_pages_limit,
      v_new.monthly_ai_tokens_limit, v_new.storage_limit_bytes, v_new.price_cents, v_new.currency, v_new.tier_rank)
    RETURNING * INTO v_new;
    PERFORM public.log_audit_event('subscription_plans', p_plan_key, 'INSERT', NULL,
      pg_catalog.to_jsonb(v_new) - 'created_at' - 'updated_at', p_reason, 'billing', p_changed_by => p_actor);
    RETURN pg_catalog.jsonb_build_object('plan', pg_catalog.to_jsonb(v_new), 'old', NULL, 'changed', true);
  END IF;

  IF (pg_catalog.to_jsonb(v_new) - 'updated_at') = (pg_catalog.to_jsonb(v_old) - 'updated_at') THEN
    RETURN pg_catalog.jsonb_build_object('plan', pg_catalog.to_jsonb(v_old), 'old', pg_catalog.to_jsonb(v_old), 'changed', false);
  END IF;
  UPDATE public.subscription_plans SET
    display_name = v_new.display_name,
    monthly_shell_files_limit = v_new.monthly_shell_files_limit,
    monthly_pages_limit = v_new.monthly_pages_limit,
    monthly_ai_tokens_limit = v_new.monthly_ai_tokens_limit,
    storage_limit_bytes = v_new.storage_limit_bytes,
    price_cents = v_new.price_cents,
    currency = v_new.currency,
    tier_rank = v_new.tier_rank
  WHERE plan_key = p_plan_key
  RETURNING * INTO v_new;
  PERFORM public.log_audit_event('subscription_plans', p_plan_key, 'UPDATE',
    pg_catalog.to_jsonb(v_old) - 'created_at' - 'updated_at', pg_catalog.to_jsonb(v_new) - 'created_at' - 'updated_at',
    p_reason, 'billing', p_changed_by => p_actor);
  RETURN pg_catalog.jsonb_build_object('plan', pg_catalog.to_jsonb(v_new), 'old', pg_catalog.to_jsonb(v_old), 'changed', true);
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.upsert_subscription_plan(text, jsonb, boolean, text, text) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.upsert_subscription_plan(text, jsonb, boolean, text, text) TO service_role;

-- retire_subscription_plan: no new assignments; accounts on it keep it.
-- 'free' (the default plan) cannot be retired. Audited.
-- +goose StatementBegin
CREATE FUNCTION public.retire_subscription_plan(p_plan_key text, p_actor text DEFAULT NULL, p_reason text DEFAULT NULL)
  RETURNS jsonb
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  v_old public.subscription_plans;
  v_new public.subscription_plans;
  v_accounts bigint;
BEGIN
  SELECT * INTO v_old FROM public.subscription_plans WHERE plan_key = p_plan_key FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = pg_catalog.format('plan %L not found', p_plan_key),
      HINT = 'valid plans: ' || (SELECT pg_catalog.string_agg(plan_key, ', ' ORDER BY tier_rank, plan_key) FROM public.subscription_plans);
  END IF;
  IF p_plan_key = 'free' THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'plan ''free'' cannot be retired: it is the plan of every account without an assignment';
  END IF;
  SELECT count(*) INTO v_accounts FROM public.account_plans WHERE plan_key = p_plan_key;
  IF NOT v_old.is_active THEN
    RETURN pg_catalog.jsonb_build_object('plan', pg_catalog.to_jsonb(v_old), 'changed', false, 'accounts', v_accounts);
  END IF;
  UPDATE public.subscription_plans SET is_active = false, retired_at = pg_catalog.now()
    WHERE plan_key = p_plan_key RETURNING * INTO v_new;
  PERFORM public.log_audit_event('subscription_plans', p_plan_key, 'RETIRE',
    pg_catalog.jsonb_build_object('is_active', true), pg_catalog.jsonb_build_object('is_active', false, 'accounts', v_accounts),
    p_reason, 'billing', p_changed_by => p_actor);
  RETURN pg_catalog.jsonb_build_object('plan', pg_catalog.to_jsonb(v_new), 'changed', true, 'accounts', v_accounts);
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.retire_subscription_plan(text, text, text) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.retire_subscription_plan(text, text, text) TO service_role;

-- set_account_plan: move an account to a plan. Records the history row, a
-- plan_upgraded / plan_downgraded usage event (upgrade: higher tier_rank, or
-- the same rank and a higher price) and an audit row. The same plan again
-- changes nothing. Retired plans cannot be assigned.
-- +goose StatementBegin
CREATE FUNCTION public.set_account_plan(p_account_id uuid, p_plan_key text, p_actor text DEFAULT NULL,
  p_reason text DEFAULT NULL) RETURNS jsonb
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  v_old public.subscription_plans;
  v_new public.subscription_plans;
  v_change text;
  v_hist bigint;
  v_event bigint;
  v_actor text := coalesce(nullif(p_actor, ''), nullif(pg_catalog.current_setting('v3ctl.actor', true), ''), session_user::text);
BEGIN
  IF p_account_id IS NULL OR NOT EXISTS (SELECT 1 FROM auth.users u WHERE u.id = p_account_id) THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('account %s not found', coalesce(p_account_id::text, 'NULL')),
      HINT = 'pass an auth.users id (v3ctl resolves emails and profile ids)';
  END IF;
  SELECT * INTO v_new FROM public.subscription_plans WHERE plan_key = p_plan_key;
  IF NOT FOUND OR NOT v_new.is_active THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('plan %L %s', p_plan_key, CASE WHEN FOUND THEN 'is retired' ELSE 'not found' END),
      HINT = 'active plans: ' || (SELECT pg_catalog.string_agg(plan_key, ', ' ORDER BY tier_rank, plan_key)
                                   FROM public.subscription_plans WHERE is_active);
  END IF;
  PERFORM public.usage_lock_account(p_account_id);
  v_old := public.usage_account_plan(p_account_id);
  IF v_old.plan_key = v_new.plan_key THEN
    RETURN pg_catalog.jsonb_build_object('account_id', p_account_id, 'old_plan', v_old.plan_key,
      'new_plan', v_new.plan_key, 'change', 'unchanged', 'changed', false);
  END IF;
  v_change := CASE WHEN (v_new.tier_rank, v_new.price_cents) > (v_old.tier_rank, v_old.price_cents)
                   THEN 'plan_upgraded' ELSE 'plan_downgraded' END;
  INSERT INTO public.account_plans AS ap (account_id, plan_key, assigned_by, assigned_at)
  VALUES (p_account_id, v_new.plan_key, v_actor, pg_catalog.now())
  ON CONFLICT (account_id) DO UPDATE SET plan_key = EXCLUDED.plan_key, assigned_by = EXCLUDED.assigned_by,
    assigned_at = EXCLUDED.assigned_at;
  INSERT INTO public.account_plan_history (account_id, old_plan_key, new_plan_key, change_type, changed_by, reason)
  VALUES (p_account_id, v_old.plan_key, v_new.plan_key, v_change, v_actor, p_reason)
  RETURNING id INTO v_hist;
  v_event := public.usage_insert_event('plan:' || v_hist, v_change, p_account_id, NULL, pg_catalog.now(),
    p_metadata => pg_catalog.jsonb_build_object('old_plan', v_old.plan_key, 'new_plan', v_new.plan_key));
  PERFORM public.log_audit_event('account_plans', p_account_id::text, v_change,
    pg_catalog.jsonb_build_object('plan_key', v_old.plan_key), pg_catalog.jsonb_build_object('plan_key', v_new.plan_key),
    p_reason, 'billing', p_changed_by => v_actor);
  RETURN pg_catalog.jsonb_build_object('account_id', p_account_id, 'old_plan', v_old.plan_key,
    'new_plan', v_new.plan_key, 'change', v_change, 'changed', true, 'event_id', v_event, 'history_id', v_hist);
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.set_account_plan(uuid, text, text, text) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.set_account_plan(uuid, text, text, text) TO service_role;

-- verify_usage_aggregates: every difference between the stored aggregates
-- and what the events say (none = no drift). p_month limits the monthly
-- check to one period (any date in it); the storage level is always checked.
-- stored/expected NULL means the row is missing on that side.
-- +goose StatementBegin
CREATE FUNCTION public.verify_usage_aggregates(p_month date DEFAULT NULL)
  RETURNS TABLE(aggregate text, profile_id uuid, period_start date, metric text, stored bigint, expected bigint)
  LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = ''
  AS $$
  WITH want AS (
    SELECT e.profile_id, e.period_start, sum(e.files)::bigint AS shell_files, sum(e.pages)::bigint AS pages,
           sum(e.bytes)::bigint AS bytes_uploaded, sum(e.tokens)::bigint AS ai_tokens,
           sum(e.jobs)::bigint AS ai_jobs, sum(e.seconds)::bigint AS ai_seconds
    FROM public.usage_events e
    WHERE e.profile_id IS NOT NULL
      AND (e.files <> 0 OR e.pages <> 0 OR e.bytes <> 0 OR e.tokens <> 0 OR e.jobs <> 0 OR e.seconds <> 0)
      AND (p_month IS NULL OR e.period_start = date_trunc('month', p_month)::date)
    GROUP BY e.profile_id, e.period_start
  ), have AS (
    SELECT m.* FROM public.usage_monthly m
    WHERE p_month IS NULL OR m.period_start = date_trunc('month', p_month)::date
  ), swant AS (
    SELECT e.profile_id, sum(e.storage_delta_bytes)::bigint AS storage_bytes
    FROM public.usage_events e
    WHERE e.profile_id IS NOT NULL AND e.storage_delta_bytes <> 0
    GROUP BY e.profile_id
  )
  SELECT 'usage_monthly', coalesce(w.profile_id, h.profile_id), coalesce(w.period_start, h.period_start),
         v.metric, v.stored, v.expected
  FROM want w
  FULL JOIN have h ON h.profile_id = w.profile_id AND h.period_start = w.period_start
  CROSS JOIN LATERAL (VALUES
    ('shell_files', h.shell_files, w.shell_files),
    ('pages', h.pages, w.pages),
    ('bytes_uploaded', h.bytes_uploaded, w.bytes_uploaded),
    ('ai_tokens', h.ai_tokens, w.ai_tokens),
    ('ai_jobs', h.ai_jobs, w.ai_jobs),
    ('ai_seconds', h.ai_seconds, w.ai_seconds)) AS v(metric, stored, expected)
  WHERE v.stored IS DISTINCT FROM v.expected
  UNION ALL
  SELECT 'usage_storage', coalesce(w.profile_id, s.profile_id), NULL::date, 'storage_bytes', s.storage_bytes, w.storage_bytes
  FROM swant w
  FULL JOIN public.usage_storage s ON s.profile_id = w.profile_id
  WHERE s.storage_bytes IS DISTINCT FROM w.storage_bytes
  ORDER BY 1, 3, 2, 4
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.verify_usage_aggregates(date) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.verify_usage_aggregates(date) TO service_role;

-- rebuild_usage_aggregates: recompute usage_monthly (all periods, or the one
-- containing p_month) and the storage level from the events, in one
-- transaction that blocks new events meanwhile (SHARE lock on usage_events).
-- Returns {"period", "monthly_rows", "storage_rows", "corrected"} where
-- corrected counts the differences that verify would have reported. Audited.
-- +goose StatementBegin
CREATE FUNCTION public.rebuild_usage_aggregates(p_month date DEFAULT NULL, p_actor text DEFAULT NULL,
  p_reason text DEFAULT NULL) RETURNS jsonb
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  v_period date := date_trunc('month', p_month)::date;
  v_corrected bigint;
  v_monthly bigint;
  v_storage bigint;
BEGIN
  LOCK TABLE public.usage_events IN SHARE MODE;
  LOCK TABLE public.usage_monthly, public.usage_storage IN EXCLUSIVE MODE;
  SELECT count(*) INTO v_corrected FROM public.verify_usage_aggregates(p_month);

  DELETE FROM public.usage_monthly m WHERE v_period IS NULL OR m.period_start = v_period;
  INSERT INTO public.usage_monthly (profile_id, period_start, account_id, shell_files, pages, bytes_uploaded,
                                    ai_tokens, ai_jobs, ai_seconds)
  SELECT e.profile_id, e.period_start, (pg_catalog.array_agg(e.account_id ORDER BY e.id DESC))[1],
         sum(e.files), sum(e.pages), sum(e.bytes), sum(e.tokens), sum(e.jobs), sum(e.seconds)
  FROM public.usage_events e
  WHERE e.profile_id IS NOT NULL
    AND (e.files <> 0 OR e.pages <> 0 OR e.bytes <> 0 OR e.tokens <> 0 OR e.jobs <> 0 OR e.seconds <> 0)
    AND (v_period IS NULL OR e.period_start = v_period)
  GROUP BY e.profile_id, e.period_start;
  GET DIAGNOSTICS v_monthly = ROW_COUNT;

  DELETE FROM public.usage_storage;
  INSERT INTO public.usage_storage (profile_id, account_id, storage_bytes)
  SELECT e.profile_id, (pg_catalog.array_agg(e.account_id ORDER BY e.id DESC))[1], sum(e.storage_delta_bytes)
  FROM public.usage_events e
  WHERE e.profile_id IS NOT NULL AND e.storage_delta_bytes <> 0
  GROUP BY e.profile_id;
  GET DIAGNOSTICS v_storage = ROW_COUNT;

  PERFORM public.log_audit_event('usage_monthly', coalesce(pg_catalog.to_char(v_period, 'YYYY-MM'), 'all'), 'REBUILD',
    NULL, pg_catalog.jsonb_build_object('monthly_rows', v_monthly, 'storage_rows', v_storage, 'corrected', v_corrected),
    p_reason, 'billing', p_changed_by => p_actor);
  RETURN pg_catalog.jsonb_build_object('period', pg_catalog.to_char(v_period, 'YYYY-MM'), 'monthly_rows', v_monthly,
    'storage_rows', v_storage, 'corrected', v_corrected);
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.rebuild_usage_aggregates(date, text, text) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.rebuild_usage_aggregates(date, text, text) TO service_role;

-- usage_report: one row per account for a period (any date in it; default
-- the current month): plan, each metric with its limit and percentage,
-- over_limit; over-limit accounts first, then by highest percentage. For the
-- current period storage is the current level; for past periods it is the
-- level at the end of that period (from the ledger).
-- +goose StatementBegin
CREATE FUNCTION public.usage_report(p_month date DEFAULT NULL, p_plan text DEFAULT NULL,
  p_over_limit_only boolean DEFAULT false)
  RETURNS TABLE(account_id uuid, email text, plan_type text, profiles bigint,
    shell_files bigint, shell_files_limit bigint, shell_files_pct numeric,
    pages bigint, pages_limit bigint, pages_pct numeric,
    ai_tokens bigint, ai_tokens_limit bigint, ai_tokens_pct numeric,
    storage_bytes bigint, storage_limit_bytes bigint, storage_pct numeric,
    bytes_uploaded bigint, ai_jobs bigint, ai_seconds bigint,
    over_limit boolean, max_pct numeric)
  LANGUAGE plpgsql STABLE SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  v_period date := date_trunc('month', coalesce(p_month, (pg_catalog.now() AT TIME ZONE 'UTC')::date))::date;
  v_current boolean := v_period >= date_trunc('month', pg_catalog.now() AT TIME ZONE 'UTC')::date;
BEGIN
  IF p_plan IS NOT NULL AND NOT EXISTS (SELECT 1 FROM public.subscription_plans sp WHERE sp.plan_key = p_plan) THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = pg_catalog.format('plan %L not found', p_plan),
      HINT = 'valid plans: ' || (SELECT pg_catalog.string_agg(sp.plan_key, ', ' ORDER BY sp.tier_rank, sp.plan_key) FROM public.subscription_plans sp);
  END IF;
  RETURN QUERY
  WITH m AS (
    SELECT um.account_id, sum(um.shell_files)::bigint AS shell_files, sum(um.pages)::bigint AS pages,
           sum(um.ai_tokens)::bigint AS ai_tokens, sum(um.bytes_uploaded)::bigint AS bytes_uploaded,
           sum(um.ai_jobs)::bigint AS ai_jobs, sum(um.ai_seconds)::bigint AS ai_seconds
    FROM public.usage_monthly um WHERE um.period_start = v_period GROUP BY um.account_id
  ), s AS (
    SELECT us.account_id, sum(us.storage_bytes)::bigint AS storage_bytes
    FROM public.usage_storage us WHERE v_current GROUP BY us.account_id
    UNION ALL
    SELECT e.account_id, sum(e.storage_delta_bytes)::bigint
    FROM public.usage_events e
    WHERE NOT v_current AND e.storage_delta_bytes <> 0 AND e.period_start <= v_period
    GROUP BY e.account_id
  ), pc AS (
    SELECT up.account_owner_id, count(*) AS n FROM public.user_profiles up GROUP BY up.account_owner_id
  ), r AS (
    SELECT u.id, u.email::text AS email, sp.plan_key, coalesce(pc.n, 0) AS profiles,
           coalesce(m.shell_files, 0) AS shell_files, sp.monthly_shell_files_limit::bigint AS fl,
           coalesce(m.pages, 0) AS pages, sp.monthly_pages_limit::bigint AS pl,
           coalesce(m.ai_tokens, 0) AS ai_tokens, sp.monthly_ai_tokens_limit AS tl,
           coalesce(s.storage_bytes, 0) AS storage_bytes, sp.storage_limit_bytes AS sl,
           coalesce(m.bytes_uploaded, 0) AS bytes_uploaded, coalesce(m.ai_jobs, 0) AS ai_jobs,
           coalesce(m.ai_seconds, 0) AS ai_seconds
    FROM auth.users u
    LEFT JOIN public.account_plans ap ON ap.account_id = u.id
    JOIN public.subscription_plans sp ON sp.plan_key = coalesce(ap.plan_key, 'free')
    LEFT JOIN m ON m.account_id = u.id
    LEFT JOIN s ON s.account_id = u.id
    LEFT JOIN pc ON pc.account_owner_id = u.id
    WHERE p_plan IS NULL OR sp.plan_key = p_plan
  ), q AS (
    SELECT r.*,
      CASE WHEN r.fl IS NULL THEN NULL WHEN r.fl = 0 THEN CASE WHEN r.shell_files > 0 THEN 100 ELSE 0 END
           ELSE round(r.shell_files::numeric * 100 / r.fl, 1) END AS fp,
      CASE WHEN r.pl IS NULL THEN NULL WHEN r.pl = 0 THEN CASE WHEN r.pages > 0 THEN 100 ELSE 0 END
           ELSE round(r.pages::numeric * 100 / r.pl, 1) END AS pp,
      CASE WHEN r.tl IS NULL THEN NULL WHEN r.tl = 0 THEN CASE WHEN r.ai_tokens > 0 THEN 100 ELSE 0 END
           ELSE round(r.ai_tokens::numeric * 100 / r.tl, 1) END AS tp,
      CASE WHEN r.sl IS NULL THEN NULL WHEN r.sl = 0 THEN CASE WHEN r.storage_bytes > 0 THEN 100 ELSE 0 END
           ELSE round(r.storage_bytes::numeric * 100 / r.sl, 1) END AS sp_,
      (r.shell_files > r.fl OR r.pages > r.pl OR r.ai_tokens > r.tl OR r.storage_bytes > r.sl) IS TRUE AS over
    FROM r
  )
  SELECT q.id, q.email, q.plan_key, q.profiles, q.shell_files, q.fl, q.fp, q.pages, q.pl, q.pp,
         q.ai_tokens, q.tl, q.tp, q.storage_bytes, q.sl, q.sp_, q.bytes_uploaded, q.ai_jobs, q.ai_seconds,
         q.over, greatest(q.fp, q.pp, q.tp, q.sp_)
  FROM q
  WHERE NOT coalesce(p_over_limit_only, false) OR q.over
  ORDER BY q.over DESC, greatest(q.fp, q.pp, q.tp, q.sp_) DESC NULLS LAST, q.email NULLS LAST, q.id;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.usage_report(date, text, boolean) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.usage_report(date, text, boolean) TO service_role;

-- ---------------------------------------------------------------------------
-- Grants and row level security
-- ---------------------------------------------------------------------------
ALTER TABLE public.subscription_plans ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.account_plans ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.account_plan_history ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.usage_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.usage_monthly ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.usage_storage ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.usage_storage_files ENABLE ROW LEVEL SECURITY;

REVOKE ALL ON public.subscription_plans, public.account_plans, public.account_plan_history, public.usage_events,
              public.usage_monthly, public.usage_storage, public.usage_storage_files FROM PUBLIC, anon, authenticated;
-- The system reads everything; every write goes through the functions above.
GRANT SELECT ON public.subscription_plans, public.account_plans, public.account_plan_history, public.usage_events,
                public.usage_monthly, public.usage_storage, public.usage_storage_files TO service_role;

-- Plans are public knowledge to signed-in users.
GRANT SELECT ON public.subscription_plans TO authenticated;
CREATE POLICY subscription_plans_select ON public.subscription_plans FOR SELECT TO authenticated USING (true);
-- A user reads their own account's plan.
GRANT SELECT ON public.account_plans TO authenticated;
CREATE POLICY account_plans_select ON public.account_plans FOR SELECT TO authenticated
  USING (account_id = (SELECT auth.uid()));
-- Aggregates of the profiles a user can access, read-only.
GRANT SELECT ON public.usage_monthly, public.usage_storage TO authenticated;
CREATE POLICY usage_monthly_select ON public.usage_monthly FOR SELECT TO authenticated
  USING (public.has_profile_access((SELECT auth.uid()), profile_id));
CREATE POLICY usage_storage_select ON public.usage_storage FOR SELECT TO authenticated
  USING (public.has_profile_access((SELECT auth.uid()), profile_id));
-- usage_events, account_plan_history, usage_storage_files: no policies.

-- +goose Down
-- Restore the queue migration's no-op enqueue hook (same text as in 00002).
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.usage_enforce_enqueue(p_job_type text, p_patient_id uuid, p_payload jsonb) RETURNS void
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
BEGIN
  -- no-op: replaced by the usage migration (refuses over-limit AI jobs when billing is on)
  RETURN;
END
$$;
-- +goose StatementEnd
DROP FUNCTION IF EXISTS public.usage_report(date, text, boolean);
DROP FUNCTION IF EXISTS public.rebuild_usage_aggregates(date, text, text);
DROP FUNCTION IF EXISTS public.verify_usage_aggregates(date);
DROP FUNCTION IF EXISTS public.set_account_plan(uuid, text, text, text);
DROP FUNCTION IF EXISTS public.retire_subscription_plan(text, text, text);
DROP FUNCTION IF EXISTS public.upsert_subscription_plan(text, jsonb, boolean, text, text);
DROP FUNCTION IF EXISTS public.usage_limit_value(text, jsonb, boolean);
DROP FUNCTION IF EXISTS public.get_user_usage_status(uuid, timestamptz);
DROP FUNCTION IF EXISTS public.usage_account_status(uuid, timestamptz);
DROP TRIGGER IF EXISTS shell_files_usage_storage_delete ON public.shell_files;
DROP TRIGGER IF EXISTS shell_files_usage_storage_update ON public.shell_files;
DROP FUNCTION IF EXISTS public.usage_shell_file_storage();
DROP FUNCTION IF EXISTS public.check_upload_allowed(uuid, bigint, integer, timestamptz);
DROP FUNCTION IF EXISTS public.track_ai_processing_usage(uuid, uuid, integer, integer, timestamptz);
DROP FUNCTION IF EXISTS public.track_shell_file_upload_usage(uuid, uuid, bigint, integer, timestamptz);
DROP FUNCTION IF EXISTS public.usage_over_limits(uuid, date);
DROP FUNCTION IF EXISTS public.usage_record_limit_hits(uuid, uuid, timestamptz, text[]);
DROP FUNCTION IF EXISTS public.usage_enforce(uuid, date, bigint, bigint, bigint, bigint, text);
DROP FUNCTION IF EXISTS public.usage_metric_label(text);
DROP FUNCTION IF EXISTS public.usage_metrics(public.subscription_plans, bigint, bigint, bigint, bigint);
DROP FUNCTION IF EXISTS public.usage_insert_event(text, text, uuid, uuid, timestamptz, bigint, bigint, bigint,
  bigint, bigint, bigint, bigint, uuid, uuid, jsonb);
DROP FUNCTION IF EXISTS public.usage_lock_account(uuid);
DROP FUNCTION IF EXISTS public.usage_account_totals(uuid, date);
DROP FUNCTION IF EXISTS public.usage_account_plan(uuid);
DROP FUNCTION IF EXISTS public.usage_profile_account(uuid);
DROP TABLE IF EXISTS public.usage_storage_files;
DROP TABLE IF EXISTS public.usage_storage;
DROP TABLE IF EXISTS public.usage_monthly;
DROP TABLE IF EXISTS public.usage_events;
DROP FUNCTION IF EXISTS public.usage_events_append_only();
DROP TABLE IF EXISTS public.account_plan_history;
DROP TABLE IF EXISTS public.account_plans;
DROP TABLE IF EXISTS public.subscription_plans;
