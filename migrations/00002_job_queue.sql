-- V3 job coordination: the job queue, its archive and the SQL API the Edge
-- Functions, the worker and v3ctl call (see docs/queue.md).
--
-- Layout:
--   * public.job_queue holds only unfinished jobs (pending, processing). It is
--     the hot table: small, fillfactor 70 so heartbeats are HOT updates, one
--     partial index that claim walks in priority order.
--   * public.job_queue_archive holds finished jobs (completed, cancelled,
--     dead_letter, failed) with the same columns in the same order; a job is
--     moved there (DELETE ... RETURNING + INSERT) in the transaction that
--     finishes it. requeue_dead_letter_jobs moves dead letters back.
--   * public.job_queue_all is a read-only view over both.
--
-- Fencing: every claim issues a new lease_token. complete/fail/heartbeat/
-- reschedule/release only act on a job that is 'processing', held by the
-- given worker id and (when a token is passed) under that token; otherwise
-- they return false and change nothing.

-- +goose Up

CREATE TABLE public.job_queue (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  job_type text NOT NULL,
  job_lane text,
  job_category text NOT NULL DEFAULT 'standard',
  job_name text NOT NULL,
  job_payload jsonb NOT NULL,
  job_result jsonb,
  status text NOT NULL DEFAULT 'pending',
  priority integer NOT NULL DEFAULT 5,
  scheduled_at timestamptz NOT NULL DEFAULT now(),
  started_at timestamptz,
  completed_at timestamptz,
  worker_id text,
  heartbeat_at timestamptz,
  lease_token uuid,
  retry_count integer NOT NULL DEFAULT 0,
  max_retries integer NOT NULL DEFAULT 3,
  reschedule_count integer NOT NULL DEFAULT 0,
  error_details jsonb,
  error_history jsonb NOT NULL DEFAULT '[]'::jsonb,
  dead_letter_at timestamptz,
  patient_id uuid,
  shell_file_id uuid,
  idempotency_key text,
  correlation_id text,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT job_queue_status_check CHECK (status IN ('pending', 'processing')),
  CONSTRAINT job_queue_category_check CHECK (job_category IN ('critical', 'high_priority', 'standard', 'background', 'maintenance')),
  CONSTRAINT job_queue_priority_check CHECK (priority BETWEEN 1 AND 10),
  CONSTRAINT job_queue_retry_count_check CHECK (retry_count >= 0),
  CONSTRAINT job_queue_max_retries_check CHECK (max_retries BETWEEN 0 AND 100),
  CONSTRAINT job_queue_reschedule_count_check CHECK (reschedule_count >= 0),
  CONSTRAINT job_queue_payload_check CHECK (jsonb_typeof(job_payload) = 'object'),
  CONSTRAINT job_queue_error_history_check CHECK (jsonb_typeof(error_history) = 'array'),
  CONSTRAINT job_queue_lease_check CHECK (
    (status = 'processing') = (worker_id IS NOT NULL AND lease_token IS NOT NULL AND heartbeat_at IS NOT NULL))
) WITH (fillfactor = 70);

COMMENT ON TABLE public.job_queue IS
  'Unfinished V3 jobs (pending, processing). Finished jobs live in job_queue_archive. Change rows only through the queue functions (docs/queue.md).';

-- Claim walks this index in (priority, scheduled_at, created_at) order.
CREATE INDEX job_queue_claim_idx ON public.job_queue (priority, scheduled_at, created_at)
  WHERE status = 'pending';
-- Filtered claims (a worker asking for some types or lanes) walk this one,
-- per "queue key" (the lane, or the type of a lane-less job), so that a large
-- backlog of other types is never scanned.
CREATE INDEX job_queue_claim_key_idx ON public.job_queue
  ((coalesce(job_lane, job_type)), priority, scheduled_at, created_at)
  WHERE status = 'pending';
-- Reclaim and "what does worker X hold": in-flight jobs only. heartbeat_at is
-- deliberately not indexed so that heartbeats stay HOT updates.
CREATE INDEX job_queue_processing_idx ON public.job_queue (worker_id)
  WHERE status = 'processing';
-- One unfinished job per idempotency key (finished jobs left this table).
CREATE UNIQUE INDEX job_queue_idempotency_key_idx ON public.job_queue (idempotency_key)
  WHERE idempotency_key IS NOT NULL;
CREATE INDEX job_queue_shell_file_id_idx ON public.job_queue (shell_file_id) WHERE shell_file_id IS NOT NULL;
CREATE INDEX job_queue_patient_id_idx ON public.job_queue (patient_id) WHERE patient_id IS NOT NULL;

-- Same columns in the same order as job_queue (the functions copy whole rows).
CREATE TABLE public.job_queue_archive (LIKE public.job_queue INCLUDING DEFAULTS);
ALTER TABLE public.job_queue_archive
  ADD CONSTRAINT job_queue_archive_pkey PRIMARY KEY (id),
  ADD CONSTRAINT job_queue_archive_status_check CHECK (status IN ('completed', 'failed', 'cancelled', 'dead_letter')),
  ADD CONSTRAINT job_queue_archive_completed_at_check CHECK (completed_at IS NOT NULL);
ALTER TABLE public.job_queue_archive ALTER COLUMN status SET DEFAULT 'completed';
COMMENT ON TABLE public.job_queue_archive IS
  'Finished V3 jobs (completed, cancelled, dead_letter, failed); completed_at is when the job finished. Purged by purge_finished_jobs.';
CREATE INDEX job_queue_archive_completed_at_idx ON public.job_queue_archive (completed_at);
CREATE INDEX job_queue_archive_dead_letter_idx ON public.job_queue_archive (dead_letter_at)
  WHERE status IN ('dead_letter', 'failed');
CREATE INDEX job_queue_archive_shell_file_id_idx ON public.job_queue_archive (shell_file_id) WHERE shell_file_id IS NOT NULL;
CREATE INDEX job_queue_archive_patient_id_idx ON public.job_queue_archive (patient_id) WHERE patient_id IS NOT NULL;

CREATE VIEW public.job_queue_all WITH (security_invoker = true) AS
  SELECT * FROM public.job_queue
  UNION ALL
  SELECT * FROM public.job_queue_archive;
COMMENT ON VIEW public.job_queue_all IS 'Every job, unfinished and finished (read only).';

ALTER TABLE public.job_queue ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.job_queue_archive ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.job_queue, public.job_queue_archive, public.job_queue_all FROM PUBLIC, anon, authenticated;
GRANT ALL ON public.job_queue, public.job_queue_archive TO service_role;
GRANT SELECT ON public.job_queue_all TO service_role;

-- Queue settings (read with get_system_config; changed with v3ctl settings set).
INSERT INTO public.system_configuration
  (config_key, config_value, default_value, config_type, value_kind, min_value, max_value, requires_restart, description)
VALUES
  ('queue.retry_base_delay_seconds', '30', '30', 'system', 'integer', 1, 86400, false,
   'Backoff after a retryable failure: min(base * 2^(attempt-1), max), then a random 50-100 % of that.'),
  ('queue.retry_max_delay_seconds', '3600', '3600', 'system', 'integer', 1, 604800, false,
   'Upper bound of the retry backoff.'),
  ('queue.max_reschedules', '100', '100', 'system', 'integer', 1, 100000, false,
   'A job handed back (reschedule) more often than this goes to dead letter instead.');

-- ---------------------------------------------------------------------------
-- Hooks replaced by later migrations (usage, ratelimit). No-ops here.
-- ---------------------------------------------------------------------------
-- +goose StatementBegin
CREATE FUNCTION public.usage_enforce_enqueue(p_job_type text, p_patient_id uuid, p_payload jsonb) RETURNS void
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
BEGIN
  -- no-op: replaced by the usage migration (refuses over-limit AI jobs when billing is on)
  RETURN;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.usage_enforce_enqueue(text, uuid, jsonb) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.usage_enforce_enqueue(text, uuid, jsonb) TO service_role;

-- +goose StatementBegin
CREATE FUNCTION public.release_job_capacity(p_job_id uuid) RETURNS void
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
BEGIN
  -- no-op: replaced by the ratelimit migration (frees vendor capacity held for the job)
  RETURN;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.release_job_capacity(uuid) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.release_job_capacity(uuid) TO service_role;

-- ---------------------------------------------------------------------------
-- Helpers
-- ---------------------------------------------------------------------------

-- job_queue_types: every job type the queue accepts.
-- +goose StatementBegin
CREATE FUNCTION public.job_queue_types() RETURNS text[]
  LANGUAGE sql IMMUTABLE
  SET search_path = ''
  AS $$
  SELECT ARRAY['shell_file_processing', 'ai_processing', 'audit_cleanup', 'notification_delivery',
               'report_generation', 'backup_operation', 'system_maintenance', 'semantic_processing',
               'consent_verification', 'provider_verification', 'data_migration']
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.job_queue_types() FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.job_queue_types() TO service_role;

-- job_queue_valid_lanes: the lanes of a job type (empty array: lane-less type),
-- NULL for an unknown type.
-- +goose StatementBegin
CREATE FUNCTION public.job_queue_valid_lanes(p_job_type text) RETURNS text[]
  LANGUAGE sql IMMUTABLE
  SET search_path = ''
  AS $$
  SELECT CASE p_job_type
    WHEN 'shell_file_processing' THEN ARRAY['fast_queue', 'standard_queue']
    WHEN 'ai_processing' THEN ARRAY['ai_queue_simple', 'ai_queue_complex']
    WHEN 'audit_cleanup' THEN ARRAY[]::text[]
    WHEN 'notification_delivery' THEN ARRAY[]::text[]
    WHEN 'report_generation' THEN ARRAY[]::text[]
    WHEN 'backup_operation' THEN ARRAY[]::text[]
    WHEN 'system_maintenance' THEN ARRAY[]::text[]
    WHEN 'semantic_processing' THEN ARRAY[]::text[]
    WHEN 'consent_verification' THEN ARRAY[]::text[]
    WHEN 'provider_verification' THEN ARRAY[]::text[]
    WHEN 'data_migration' THEN ARRAY[]::text[]
  END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.job_queue_valid_lanes(text) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.job_queue_valid_lanes(text) TO service_role;

-- job_queue_audit: one audit row for one job state change.
-- +goose StatementBegin
CREATE FUNCTION public.job_queue_audit(
  p_job public.job_queue,
  p_operation text,
  p_old_status text,
  p_extra jsonb DEFAULT NULL,
  p_reason text DEFAULT NULL,
  p_actor text DEFAULT NULL
) RETURNS void
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
BEGIN
  PERFORM public.log_audit_event(
    'job_queue', (p_job).id::text, p_operation,
    CASE WHEN p_old_status IS NULL THEN NULL ELSE pg_catalog.jsonb_build_object('status', p_old_status) END,
    pg_catalog.jsonb_build_object('status', (p_job).status, 'job_type', (p_job).job_type,
      'job_lane', (p_job).job_lane, 'retry_count', (p_job).retry_count,
      'worker_id', (p_job).worker_id) || coalesce(p_extra, '{}'::jsonb),
    p_reason, 'job_processing', (p_job).patient_id, (p_job).correlation_id, (p_job).id,
    p_actor);
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.job_queue_audit(public.job_queue, text, text, jsonb, text, text) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.job_queue_audit(public.job_queue, text, text, jsonb, text, text) TO service_role;

-- job_queue_check_worker: a worker id is required (1..200 characters).
-- +goose StatementBegin
CREATE FUNCTION public.job_queue_check_worker(p_worker_id text) RETURNS void
  LANGUAGE plpgsql IMMUTABLE
  SET search_path = ''
  AS $$
BEGIN
  IF p_worker_id IS NULL OR pg_catalog.btrim(p_worker_id) = '' OR pg_catalog.length(p_worker_id) > 200 THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('invalid worker id %L', p_worker_id),
      HINT = 'a worker id is a non-empty text of at most 200 characters, e.g. host-pid';
  END IF;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.job_queue_check_worker(text) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.job_queue_check_worker(text) TO service_role;

-- job_queue_finish: move a job (already deleted from job_queue by the caller)
-- into the archive in its final state.
-- +goose StatementBegin
CREATE FUNCTION public.job_queue_finish(p_job public.job_queue) RETURNS void
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
BEGIN
  INSERT INTO public.job_queue_archive SELECT (p_job).*;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.job_queue_finish(public.job_queue) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.job_queue_finish(public.job_queue) TO service_role;

-- ---------------------------------------------------------------------------
-- enqueue
-- ---------------------------------------------------------------------------
-- enqueue_job_v3 validates and inserts one pending job and wakes idle workers
-- (NOTIFY v3_jobs with {"job_type","job_lane"}). With an idempotency key, a
-- second enqueue while the first job is unfinished returns the first job
-- (also under concurrent callers). patient_id / shell_file_id /
-- correlation_id come from the parameters or else the payload.
-- +goose StatementBegin
CREATE FUNCTION public.enqueue_job_v3(
  job_type text,
  job_name text,
  job_payload jsonb,
  job_category text DEFAULT 'standard',
  priority integer DEFAULT 5,
  p_scheduled_at timestamptz DEFAULT NULL,
  p_job_lane text DEFAULT NULL,
  p_idempotency_key text DEFAULT NULL,
  p_correlation_id text DEFAULT NULL,
  p_max_retries integer DEFAULT 3,
  p_patient_id uuid DEFAULT NULL,
  p_shell_file_id uuid DEFAULT NULL
) RETURNS TABLE (job_id uuid, scheduled_at timestamptz)
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
#variable_conflict use_column
DECLARE
  v_type text := enqueue_job_v3.job_type;
  v_name text := enqueue_job_v3.job_name;
  v_payload jsonb := enqueue_job_v3.job_payload;
  v_category text := coalesce(enqueue_job_v3.job_category, 'standard');
  v_priority integer := coalesce(enqueue_job_v3.priority, 5);
  v_at timestamptz := coalesce(p_scheduled_at, pg_catalog.now());
  v_lane text := nullif(pg_catalog.btrim(p_job_lane), '');
  v_key text := nullif(pg_catalog.btrim(p_idempotency_key), '');
  v_corr text := nullif(pg_catalog.btrim(p_correlation_id), '');
  v_max integer := coalesce(p_max_retries, 3);
  v_patient uuid := p_patient_id;
  v_file uuid := p_shell_file_id;
  v_lanes text[];
  v_txt text;
  v_job public.job_queue;
  i integer;
BEGIN
  v_lanes := public.job_queue_valid_lanes(v_type);
  IF v_lanes IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('unknown job type %L', v_type),
      HINT = 'valid job types: shell_file_processing, ai_processing, audit_cleanup, notification_delivery, report_generation, backup_operation, system_maintenance, semantic_processing, consent_verification, provider_verification, data_migration';
  END IF;
  IF v_payload IS NULL OR pg_catalog.jsonb_typeof(v_payload) <> 'object' OR v_payload = '{}'::jsonb THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('job payload must be a non-empty JSON object, got %s',
                  coalesce(pg_catalog.jsonb_typeof(v_payload), 'NULL') ||
                  CASE WHEN v_payload = '{}'::jsonb THEN ' (empty)' ELSE '' END),
      HINT = 'pass a JSON object such as {"shell_file_id": "...", "patient_id": "..."}';
  END IF;
  IF pg_catalog.octet_length(v_payload::text) > 262144 THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('job payload is %s bytes; the limit is 262144', pg_catalog.octet_length(v_payload::text)),
      HINT = 'store large data elsewhere (e.g. storage) and put a reference in the payload';
  END IF;
  IF v_lane IS NULL THEN
    v_lane := nullif(pg_catalog.btrim(v_payload ->> 'job_lane'), '');
  END IF;
  IF pg_catalog.cardinality(v_lanes) = 0 THEN
    IF v_lane IS NOT NULL THEN
      RAISE EXCEPTION USING ERRCODE = '22023',
        MESSAGE = pg_catalog.format('job type %L has no lanes, got lane %L', v_type, v_lane),
        HINT = 'lanes exist only for shell_file_processing (fast_queue, standard_queue) and ai_processing (ai_queue_simple, ai_queue_complex)';
    END IF;
  ELSE
    IF v_lane IS NULL THEN
      v_lane := CASE v_type WHEN 'shell_file_processing' THEN 'standard_queue' ELSE 'ai_queue_simple' END;
    ELSIF NOT (v_lane = ANY (v_lanes)) THEN
      RAISE EXCEPTION USING ERRCODE = '22023',
        MESSAGE = pg_catalog.format('invalid lane %L for job type %L', v_lane, v_type),
        HINT = 'valid lanes for ' || v_type || ': ' || pg_catalog.array_to_string(v_lanes, ', ');
    END IF;
  END IF;
  IF v_name IS NULL OR pg_catalog.btrim(v_name) = '' OR pg_catalog.length(v_name) > 200 THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('invalid job name %L', v_name),
      HINT = 'a job name is a non-empty text of at most 200 characters';
  END IF;
  IF v_category NOT IN ('critical', 'high_priority', 'standard', 'background', 'maintenance') THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('invalid job category %L', v_category),
      HINT = 'valid categories: critical, high_priority, standard, background, maintenance';
  END IF;
  IF v_priority NOT BETWEEN 1 AND 10 THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('invalid priority %s', v_priority),
      HINT = 'priority is 1 (most urgent) to 10 (least urgent)';
  END IF;
  IF v_max NOT BETWEEN 0 AND 100 THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('invalid max_retries %s', v_max),
      HINT = 'max_retries is 0 to 100 (0: the first failure is final)';
  END IF;
  IF v_at > pg_catalog.now() + interval '366 days' THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('scheduled_at %s is more than a year ahead', v_at),
      HINT = 'schedule jobs at most 366 days ahead';
  END IF;
  IF v_key IS NOT NULL AND pg_catalog.length(v_key) > 255 THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = 'idempotency key is longer than 255 characters',
      HINT = 'use a short key, e.g. the upload id';
  END IF;
  -- ids from the payload, when not given as parameters; they must agree.
  FOREACH v_txt IN ARRAY ARRAY['patient_id', 'shell_file_id', 'correlation_id'] LOOP
    CONTINUE WHEN NOT (v_payload ? v_txt) OR pg_catalog.jsonb_typeof(v_payload -> v_txt) = 'null';
    BEGIN
      IF v_txt = 'patient_id' THEN
        IF v_patient IS NULL THEN v_patient := (v_payload ->> v_txt)::uuid;
        ELSIF v_patient <> (v_payload ->> v_txt)::uuid THEN
          RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'patient_id parameter differs from the payload''s patient_id',
            HINT = 'pass the same profile id in both, or only one of them';
        END IF;
      ELSIF v_txt = 'shell_file_id' THEN
        IF v_file IS NULL THEN v_file := (v_payload ->> v_txt)::uuid;
        ELSIF v_file <> (v_payload ->> v_txt)::uuid THEN
          RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'shell_file_id parameter differs from the payload''s shell_file_id',
            HINT = 'pass the same shell file id in both, or only one of them';
        END IF;
      ELSIF v_corr IS NULL THEN
        v_corr := nullif(pg_catalog.btrim(v_payload ->> v_txt), '');
      END IF;
    EXCEPTION WHEN invalid_text_representation THEN
      RAISE EXCEPTION USING ERRCODE = '22023',
        MESSAGE = pg_catalog.format('payload %s is not a UUID', v_txt),
        HINT = 'ids in the payload must be UUIDs';
    END;
  END LOOP;
  IF v_corr IS NOT NULL AND pg_catalog.length(v_corr) > 255 THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = 'correlation id is longer than 255 characters', HINT = 'use a UUID or a short trace id';
  END IF;

  -- An unfinished job with this key: return it.
  IF v_key IS NOT NULL THEN
    SELECT q.id, q.scheduled_at INTO job_id, scheduled_at
      FROM public.job_queue q WHERE q.idempotency_key = v_key;
    IF FOUND THEN
      RETURN NEXT;
      RETURN;
    END IF;
  END IF;

  PERFORM public.usage_enforce_enqueue(v_type, v_patient, v_payload);

  FOR i IN 1..20 LOOP
    INSERT INTO public.job_queue AS q (job_type, job_lane, job_category, job_name, job_payload, priority,
                                       scheduled_at, max_retries, patient_id, shell_file_id,
                                       idempotency_key, correlation_id)
    VALUES (v_type, v_lane, v_category, v_name, v_payload, v_priority, v_at, v_max, v_patient, v_file,
            v_key, v_corr)
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING q.* INTO v_job;
    IF v_job.id IS NOT NULL THEN
      PERFORM public.job_queue_audit(v_job, 'ENQUEUE', NULL,
        pg_catalog.jsonb_build_object('priority', v_job.priority, 'scheduled_at', v_job.scheduled_at,
                                      'job_category', v_job.job_category, 'max_retries', v_job.max_retries));
      PERFORM pg_catalog.pg_notify('v3_jobs',
        pg_catalog.jsonb_build_object('job_type', v_type, 'job_lane', v_lane)::text);
      job_id := v_job.id;
      scheduled_at := v_job.scheduled_at;
      RETURN NEXT;
      RETURN;
    END IF;
    -- Lost a race on the key: return the winner (unless it already finished).
    SELECT q.id, q.scheduled_at INTO job_id, scheduled_at
      FROM public.job_queue q WHERE q.idempotency_key = v_key;
    IF FOUND THEN
      RETURN NEXT;
      RETURN;
    END IF;
  END LOOP;
  RAISE EXCEPTION USING ERRCODE = '40001',
    MESSAGE = pg_catalog.format('enqueue with idempotency key %L kept conflicting; retry', v_key);
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.enqueue_job_v3(text, text, jsonb, text, integer, timestamptz, text, text, text, integer, uuid, uuid) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.enqueue_job_v3(text, text, jsonb, text, integer, timestamptz, text, text, text, integer, uuid, uuid) TO service_role;

-- ---------------------------------------------------------------------------
-- claim
-- ---------------------------------------------------------------------------
-- claim_jobs_v3 claims up to p_limit due pending jobs, most urgent first
-- (priority 1 first), then oldest scheduled_at, then created_at, skipping rows
-- other claimers hold (FOR UPDATE SKIP LOCKED). Each claimed job gets a new
-- lease_token. p_job_types / p_job_lanes filter (NULL: any; with a lane
-- filter, lane-less jobs are not claimed); unknown names are refused.
-- Returns nothing while system.maintenance_mode is true.
-- Without filters the claim walks job_queue_claim_idx; with filters it walks
-- job_queue_claim_key_idx once per matching queue key and merges.
-- +goose StatementBegin
CREATE FUNCTION public.claim_jobs_v3(
  p_worker_id text,
  p_job_types text[] DEFAULT NULL,
  p_job_lanes text[] DEFAULT NULL,
  p_limit integer DEFAULT 1
) RETURNS TABLE (
  id uuid, job_type text, job_lane text, job_name text, job_payload jsonb, job_category text,
  priority integer, attempt integer, retry_count integer, max_retries integer, lease_token uuid,
  correlation_id text, patient_id uuid, shell_file_id uuid, scheduled_at timestamptz,
  started_at timestamptz, created_at timestamptz
)
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
#variable_conflict use_column
DECLARE
  v_ids uuid[];
  v_keys text[];
  v_bad text;
BEGIN
  PERFORM public.job_queue_check_worker(p_worker_id);
  IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('invalid claim limit %s', coalesce(p_limit::text, 'NULL')),
      HINT = 'claim 1 to 1000 jobs at a time';
  END IF;
  SELECT t INTO v_bad FROM pg_catalog.unnest(p_job_types) t
  WHERE t IS NULL OR public.job_queue_valid_lanes(t) IS NULL LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('unknown job type %L in the claim filter', v_bad),
      HINT = 'valid job types: ' || pg_catalog.array_to_string(public.job_queue_types(), ', ');
  END IF;
  SELECT l INTO v_bad FROM pg_catalog.unnest(p_job_lanes) l
  WHERE l IS NULL OR l NOT IN ('fast_queue', 'standard_queue', 'ai_queue_simple', 'ai_queue_complex') LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('unknown lane %L in the claim filter', v_bad),
      HINT = 'valid lanes: fast_queue, standard_queue, ai_queue_simple, ai_queue_complex';
  END IF;
  IF public.get_system_config('system.maintenance_mode', 'false'::jsonb) = 'true'::jsonb THEN
    RETURN;
  END IF;

  IF p_job_types IS NULL AND p_job_lanes IS NULL THEN
    SELECT pg_catalog.array_agg(c.id) INTO v_ids FROM (
      SELECT c.id FROM public.job_queue c
      WHERE c.status = 'pending' AND c.scheduled_at <= pg_catalog.now()
      ORDER BY c.priority, c.scheduled_at, c.created_at
      LIMIT p_limit
      FOR UPDATE SKIP LOCKED
    ) c;
  ELSE
    -- Queue keys matching the filters: the lanes of laned types, the names
    -- of lane-less types (only when no lane filter is given).
    SELECT pg_catalog.array_agg(DISTINCT k.key) INTO v_keys
    FROM pg_catalog.unnest(coalesce(p_job_types, public.job_queue_types())) t(jt)
    CROSS JOIN LATERAL (
      SELECT ln AS key FROM pg_catalog.unnest(public.job_queue_valid_lanes(t.jt)) ln
      UNION ALL
      SELECT t.jt WHERE pg_catalog.cardinality(public.job_queue_valid_lanes(t.jt)) = 0
    ) k
    WHERE p_job_lanes IS NULL OR k.key = ANY (p_job_lanes);
    IF v_keys IS NULL THEN
      RETURN;
    END IF;
    -- Per key, the best p_limit rows (locked; those not taken are unlocked
    -- at commit and stay pending), then the best p_limit overall.
    SELECT pg_catalog.array_agg(x.id) INTO v_ids FROM (
      SELECT x.id FROM pg_catalog.unnest(v_keys) k(key)
      CROSS JOIN LATERAL (
        SELECT c.id, c.priority, c.scheduled_at, c.created_at FROM public.job_queue c
        WHERE c.status = 'pending' AND coalesce(c.job_lane, c.job_type) = k.key
          AND c.scheduled_at <= pg_catalog.now()
        ORDER BY c.priority, c.scheduled_at, c.created_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
      ) x
      ORDER BY x.priority, x.scheduled_at, x.created_at
      LIMIT p_limit
    ) x;
  END IF;
  IF v_ids IS NULL THEN
    RETURN;
  END IF;

  -- The chosen rows are locked: take them, with one CLAIM audit row per job
  -- written set-based (the row job_queue_audit writes; the worker is the actor).
  RETURN QUERY
    WITH upd AS (
      UPDATE public.job_queue q
      SET status = 'processing', worker_id = p_worker_id, lease_token = pg_catalog.gen_random_uuid(),
          started_at = pg_catalog.now(), heartbeat_at = pg_catalog.now(), updated_at = pg_catalog.now()
      WHERE q.id = ANY (v_ids)
      RETURNING q.*
    ), aud AS (
      INSERT INTO public.audit_log (table_name, record_id, operation, old_values, new_values,
                                    changed_by, compliance_category, patient_id, correlation_id, job_id)
      SELECT 'job_queue', u.id::text, 'CLAIM', '{"status": "pending"}'::jsonb,
             pg_catalog.jsonb_build_object('status', u.status, 'job_type', u.job_type, 'job_lane', u.job_lane,
               'retry_count', u.retry_count, 'worker_id', u.worker_id, 'attempt', u.retry_count + 1),
             p_worker_id, 'job_processing', u.patient_id, u.correlation_id, u.id
      FROM upd u
    )
    SELECT u.id, u.job_type, u.job_lane, u.job_name, u.job_payload, u.job_category, u.priority,
           u.retry_count + 1, u.retry_count, u.max_retries, u.lease_token, u.correlation_id,
           u.patient_id, u.shell_file_id, u.scheduled_at, u.started_at, u.created_at
    FROM upd u ORDER BY u.priority, u.scheduled_at, u.created_at;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.claim_jobs_v3(text, text[], text[], integer) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.claim_jobs_v3(text, text[], text[], integer) TO service_role;

-- claim_next_job_v3: the worker's single claim (same rows as claim_jobs_v3).
-- +goose StatementBegin
CREATE FUNCTION public.claim_next_job_v3(
  p_worker_id text,
  p_job_types text[] DEFAULT NULL,
  p_job_lanes text[] DEFAULT NULL
) RETURNS TABLE (
  id uuid, job_type text, job_lane text, job_name text, job_payload jsonb, job_category text,
  priority integer, attempt integer, retry_count integer, max_retries integer, lease_token uuid,
  correlation_id text, patient_id uuid, shell_file_id uuid, scheduled_at timestamptz,
  started_at timestamptz, created_at timestamptz
)
  LANGUAGE sql SECURITY DEFINER
  SET search_path = ''
  AS $$
  SELECT * FROM public.claim_jobs_v3(p_worker_id, p_job_types, p_job_lanes, 1)
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.claim_next_job_v3(text, text[], text[]) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.claim_next_job_v3(text, text[], text[]) TO service_role;

-- ---------------------------------------------------------------------------
-- heartbeat
-- ---------------------------------------------------------------------------
-- update_job_heartbeat extends the lease of one job for its current holder;
-- false when the lease is lost. Not audited (not a state change).
-- +goose StatementBegin
CREATE FUNCTION public.update_job_heartbeat(p_job_id uuid, p_worker_id text, p_lease_token uuid DEFAULT NULL)
  RETURNS boolean
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
BEGIN
  UPDATE public.job_queue q SET heartbeat_at = pg_catalog.now()
  WHERE q.id = p_job_id AND q.status = 'processing' AND q.worker_id = p_worker_id
    AND (p_lease_token IS NULL OR q.lease_token = p_lease_token);
  RETURN FOUND;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.update_job_heartbeat(uuid, text, uuid) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.update_job_heartbeat(uuid, text, uuid) TO service_role;

-- heartbeat_jobs_v3 renews every in-flight job of a worker in one statement
-- and returns the ids whose lease is lost. p_lease_tokens is NULL (no token
-- check) or parallel to p_job_ids (a NULL element skips that job's check).
-- +goose StatementBegin
CREATE FUNCTION public.heartbeat_jobs_v3(p_worker_id text, p_job_ids uuid[], p_lease_tokens uuid[] DEFAULT NULL)
  RETURNS SETOF uuid
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
BEGIN
  PERFORM public.job_queue_check_worker(p_worker_id);
  IF p_lease_tokens IS NOT NULL
     AND pg_catalog.cardinality(p_lease_tokens) <> coalesce(pg_catalog.cardinality(p_job_ids), 0) THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('%s job ids but %s lease tokens', coalesce(pg_catalog.cardinality(p_job_ids), 0),
                                  pg_catalog.cardinality(p_lease_tokens)),
      HINT = 'pass one lease token per job id, or NULL';
  END IF;
  IF p_job_ids IS NULL OR pg_catalog.cardinality(p_job_ids) = 0 THEN
    RETURN;
  END IF;
  RETURN QUERY
    WITH req AS (
      -- multi-argument unnest cannot be schema-qualified (it is FROM syntax)
      SELECT t.job_id, t.token
      FROM unnest(p_job_ids,
             coalesce(p_lease_tokens, pg_catalog.array_fill(NULL::uuid, ARRAY[pg_catalog.cardinality(p_job_ids)])))
           AS t(job_id, token)
    ), upd AS (
      UPDATE public.job_queue q SET heartbeat_at = pg_catalog.now()
      FROM req
      WHERE q.id = req.job_id AND q.status = 'processing' AND q.worker_id = p_worker_id
        AND (req.token IS NULL OR q.lease_token = req.token)
      RETURNING q.id
    )
    SELECT req.job_id FROM req
    WHERE req.job_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM upd WHERE upd.id = req.job_id);
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.heartbeat_jobs_v3(text, uuid[], uuid[]) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.heartbeat_jobs_v3(text, uuid[], uuid[]) TO service_role;

-- ---------------------------------------------------------------------------
-- complete / fail
-- ---------------------------------------------------------------------------
-- complete_job: the current holder finishes the job; it moves to the archive
-- as 'completed'. A stale holder gets false and changes nothing.
-- +goose StatementBegin
CREATE FUNCTION public.complete_job(p_job_id uuid, p_worker_id text, p_job_result jsonb DEFAULT NULL,
                                    p_lease_token uuid DEFAULT NULL)
  RETURNS boolean
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  r public.job_queue;
BEGIN
  DELETE FROM public.job_queue q
  WHERE q.id = p_job_id AND q.status = 'processing' AND q.worker_id = p_worker_id
    AND (p_lease_token IS NULL OR q.lease_token = p_lease_token)
  RETURNING q.* INTO r;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  r.status := 'completed';
  r.job_result := p_job_result;
  r.completed_at := pg_catalog.now();
  r.updated_at := pg_catalog.now();
  r.lease_token := NULL;
  PERFORM public.job_queue_finish(r);
  PERFORM public.release_job_capacity(r.id);
  PERFORM public.job_queue_audit(r, 'COMPLETE', 'processing',
    pg_catalog.jsonb_build_object('attempt', r.retry_count + 1), NULL, p_worker_id);
  RETURN true;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.complete_job(uuid, text, jsonb, uuid) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.complete_job(uuid, text, jsonb, uuid) TO service_role;

-- complete_jobs_v3: complete_job for several jobs of one worker in one call,
-- set-based (one DELETE, one archive INSERT, one audit INSERT for all of
-- them). Each job is fenced by its own lease token; the ids returned are the
-- jobs completed, any other was no longer held (lease lost) and is untouched.
-- Same rows, audit entries and capacity release as complete_job.
-- +goose StatementBegin
CREATE FUNCTION public.complete_jobs_v3(p_worker_id text, p_job_ids uuid[], p_lease_tokens uuid[],
                                        p_results jsonb[] DEFAULT NULL)
  RETURNS SETOF uuid
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  v_n integer := pg_catalog.cardinality(p_job_ids);
  v_done uuid[];
BEGIN
  PERFORM public.job_queue_check_worker(p_worker_id);
  IF v_n IS NULL OR v_n NOT BETWEEN 1 AND 1000 THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'complete_jobs_v3: give 1 to 1000 job ids';
  END IF;
  IF pg_catalog.cardinality(p_lease_tokens) IS DISTINCT FROM v_n
     OR (p_results IS NOT NULL AND pg_catalog.cardinality(p_results) <> v_n) THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = 'complete_jobs_v3: job ids, lease tokens and results must be arrays of the same length';
  END IF;
  IF EXISTS (SELECT 1 FROM ROWS FROM (pg_catalog.unnest(p_job_ids), pg_catalog.unnest(p_lease_tokens)) t(i, k)
             WHERE t.i IS NULL OR t.k IS NULL) THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'complete_jobs_v3: job ids and lease tokens must not be NULL';
  END IF;

  WITH input AS (
    SELECT t.i AS id, t.k AS tok, t.res
    FROM ROWS FROM (pg_catalog.unnest(p_job_ids), pg_catalog.unnest(p_lease_tokens),
                    pg_catalog.unnest(coalesce(p_results, pg_catalog.array_fill(NULL::jsonb, ARRAY[v_n])))) t(i, k, res)
  ), del AS (
    DELETE FROM public.job_queue q USING input i
    WHERE q.id = i.id AND q.status = 'processing' AND q.worker_id = p_worker_id AND q.lease_token = i.tok
    RETURNING q AS job, i.res
  ), fin AS (
    SELECT pg_catalog.jsonb_populate_record(d.job, pg_catalog.jsonb_build_object(
             'status', 'completed', 'job_result', d.res, 'completed_at', pg_catalog.now(),
             'updated_at', pg_catalog.now(), 'lease_token', NULL)) AS job
    FROM del d
  ), arch AS (
    INSERT INTO public.job_queue_archive SELECT (f.job).* FROM fin f RETURNING id
  ), aud AS (
    INSERT INTO public.audit_log (table_name, record_id, operation, old_values, new_values,
                                  changed_by, compliance_category, patient_id, correlation_id, job_id)
    SELECT 'job_queue', (f.job).id::text, 'COMPLETE', '{"status": "processing"}'::jsonb,
           pg_catalog.jsonb_build_object('status', (f.job).status, 'job_type', (f.job).job_type,
             'job_lane', (f.job).job_lane, 'retry_count', (f.job).retry_count, 'worker_id', (f.job).worker_id,
             'attempt', (f.job).retry_count + 1),
           p_worker_id, 'job_processing', (f.job).patient_id, (f.job).correlation_id, (f.job).id
    FROM fin f
  )
  SELECT pg_catalog.array_agg(a.id) INTO v_done FROM arch a;

  PERFORM public.release_job_capacity(x) FROM pg_catalog.unnest(v_done) x;
  RETURN QUERY SELECT x FROM pg_catalog.unnest(v_done) x;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.complete_jobs_v3(text, uuid[], uuid[], jsonb[]) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.complete_jobs_v3(text, uuid[], uuid[], jsonb[]) TO service_role;

-- job_queue_backoff: seconds to wait before attempt n+1 after n consumed
-- attempts: d = min(base * 2^(n-1), max); a random value in [d/2, d].
-- +goose StatementBegin
CREATE FUNCTION public.job_queue_backoff(p_consumed integer) RETURNS double precision
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  v_base double precision := (public.get_system_config('queue.retry_base_delay_seconds', '30'::jsonb) #>> '{}')::double precision;
  v_max double precision := (public.get_system_config('queue.retry_max_delay_seconds', '3600'::jsonb) #>> '{}')::double precision;
  v_d double precision;
BEGIN
  v_d := LEAST(v_base * pg_catalog.power(2::double precision, LEAST(GREATEST(p_consumed - 1, 0), 30)), v_max);
  RETURN v_d / 2 + pg_catalog.random() * v_d / 2;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.job_queue_backoff(integer) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.job_queue_backoff(integer) TO service_role;

-- job_queue_error_entry: one element of error_history (messages truncated to
-- 2000 characters; the history keeps the last 50 entries).
-- +goose StatementBegin
CREATE FUNCTION public.job_queue_add_error(p_history jsonb, p_entry jsonb) RETURNS jsonb
  LANGUAGE sql IMMUTABLE
  SET search_path = ''
  AS $$
  SELECT coalesce(pg_catalog.jsonb_agg(e ORDER BY n), '[]'::jsonb)
  FROM (
    SELECT e, n FROM pg_catalog.jsonb_array_elements(coalesce(p_history, '[]'::jsonb) || pg_catalog.jsonb_build_array(p_entry))
      WITH ORDINALITY AS t(e, n)
    ORDER BY n DESC LIMIT 50
  ) s
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.job_queue_add_error(jsonb, jsonb) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.job_queue_add_error(jsonb, jsonb) TO service_role;

-- fail_job: the current holder reports a failure. Retryable and attempts
-- left (retry_count after this failure <= max_retries): back to pending after
-- the backoff. Otherwise (permanent, or out of attempts): dead letter, with
-- the error history kept. Returns {"ok","status","next_attempt_at",
-- "attempt","retry_count"}; {"ok":false} for a stale holder.
-- +goose StatementBegin
CREATE FUNCTION public.fail_job(p_job_id uuid, p_worker_id text, p_error text, p_retryable boolean DEFAULT true,
                                p_lease_token uuid DEFAULT NULL)
  RETURNS jsonb
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  r public.job_queue;
  v_msg text := pg_catalog.left(coalesce(nullif(pg_catalog.btrim(p_error), ''), '(no error message)'), 2000);
  v_entry jsonb;
  v_next timestamptz;
BEGIN
  SELECT * INTO r FROM public.job_queue q
  WHERE q.id = p_job_id AND q.status = 'processing' AND q.worker_id = p_worker_id
    AND (p_lease_token IS NULL OR q.lease_token = p_lease_token)
  FOR UPDATE;
  IF NOT FOUND THEN
    RETURN pg_catalog.jsonb_build_object('ok', false);
  END IF;
  r.retry_count := r.retry_count + 1;
  v_entry := pg_catalog.jsonb_build_object('attempt', r.retry_count, 'at', pg_catalog.now(), 'worker_id', p_worker_id,
                                           'error', v_msg, 'retryable', coalesce(p_retryable, true));
  r.error_details := v_entry;
  r.error_history := public.job_queue_add_error(r.error_history, v_entry);
  PERFORM public.release_job_capacity(r.id);
  IF coalesce(p_retryable, true) AND r.retry_count <= r.max_retries THEN
    v_next := pg_catalog.now() + public.job_queue_backoff(r.retry_count) * interval '1 second';
    UPDATE public.job_queue q
    SET status = 'pending', worker_id = NULL, lease_token = NULL, heartbeat_at = NULL,
        retry_count = r.retry_count, scheduled_at = v_next, error_details = r.error_details,
        error_history = r.error_history, updated_at = pg_catalog.now()
    WHERE q.id = r.id
    RETURNING q.* INTO r;
    PERFORM public.job_queue_audit(r, 'RETRY', 'processing',
      pg_catalog.jsonb_build_object('next_attempt_at', v_next), NULL, p_worker_id);
    RETURN pg_catalog.jsonb_build_object('ok', true, 'status', 'pending', 'next_attempt_at', v_next,
                                         'attempt', r.retry_count, 'retry_count', r.retry_count);
  END IF;
  DELETE FROM public.job_queue q WHERE q.id = r.id;
  r.status := 'dead_letter';
  r.lease_token := NULL;
  r.dead_letter_at := pg_catalog.now();
  r.completed_at := pg_catalog.now();
  r.updated_at := pg_catalog.now();
  PERFORM public.job_queue_finish(r);
  PERFORM public.job_queue_audit(r, 'DEAD_LETTER', 'processing',
    pg_catalog.jsonb_build_object('retryable', coalesce(p_retryable, true)),
    CASE WHEN coalesce(p_retryable, true) THEN 'retries exhausted' ELSE 'permanent failure' END, p_worker_id);
  RETURN pg_catalog.jsonb_build_object('ok', true, 'status', 'dead_letter', 'next_attempt_at', NULL,
                                       'attempt', r.retry_count, 'retry_count', r.retry_count);
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.fail_job(uuid, text, text, boolean, uuid) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.fail_job(uuid, text, text, boolean, uuid) TO service_role;

-- ---------------------------------------------------------------------------
-- reschedule / release
-- ---------------------------------------------------------------------------
-- reschedule_job (backpressure): a processing job back to pending after a
-- delay (default queue.backpressure_delay_seconds; jitter adds up to 25 % of
-- the delay, at least up to 1 s) without consuming an attempt. Bounded: the
-- (queue.max_reschedules + 1)-th reschedule sends the job to dead letter
-- instead (still returns true: the call took effect). Fenced by worker id and
-- token when given; callers that pass neither (the legacy 4-argument form)
-- act on whichever worker holds the job. Never reopens a finished job.
-- +goose StatementBegin
CREATE FUNCTION public.reschedule_job(
  p_job_id uuid,
  p_delay_seconds integer DEFAULT NULL,
  p_reason text DEFAULT NULL,
  p_add_jitter boolean DEFAULT true,
  p_worker_id text DEFAULT NULL,
  p_lease_token uuid DEFAULT NULL
) RETURNS boolean
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  r public.job_queue;
  v_delay double precision;
  v_max integer := (public.get_system_config('queue.max_reschedules', '100'::jsonb) #>> '{}')::integer;
  v_reason text := pg_catalog.left(nullif(pg_catalog.btrim(p_reason), ''), 500);
  v_worker text;
BEGIN
  v_delay := coalesce(p_delay_seconds,
    (public.get_system_config('queue.backpressure_delay_seconds', '30'::jsonb) #>> '{}')::integer);
  IF v_delay < 0 OR v_delay > 604800 THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('invalid reschedule delay %s seconds', p_delay_seconds),
      HINT = 'the delay is 0 to 604800 seconds (7 days)';
  END IF;
  SELECT * INTO r FROM public.job_queue q
  WHERE q.id = p_job_id AND q.status = 'processing'
    AND (p_worker_id IS NULL OR q.worker_id = p_worker_id)
    AND (p_lease_token IS NULL OR q.lease_token = p_lease_token)
  FOR UPDATE;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  v_worker := r.worker_id;
  IF coalesce(p_add_jitter, true) THEN
    v_delay := v_delay + pg_catalog.random() * GREATEST(v_delay / 4, 1);
  END IF;
  PERFORM public.release_job_capacity(r.id);
  IF r.reschedule_count + 1 > v_max THEN
    DELETE FROM public.job_queue q WHERE q.id = r.id;
    r.reschedule_count := r.reschedule_count + 1;
    r.status := 'dead_letter';
    r.lease_token := NULL;
    r.error_details := pg_catalog.jsonb_build_object('attempt', r.retry_count + 1, 'at', pg_catalog.now(),
      'worker_id', v_worker, 'error', pg_catalog.format('rescheduled more than %s times (queue.max_reschedules)', v_max),
      'retryable', false);
    r.error_history := public.job_queue_add_error(r.error_history, r.error_details);
    r.dead_letter_at := pg_catalog.now();
    r.completed_at := pg_catalog.now();
    r.updated_at := pg_catalog.now();
    PERFORM public.job_queue_finish(r);
    PERFORM public.job_queue_audit(r, 'DEAD_LETTER', 'processing',
      pg_catalog.jsonb_build_object('reschedule_count', r.reschedule_count), 'reschedule limit reached', v_worker);
    RETURN true;
  END IF;
  UPDATE public.job_queue q
  SET status = 'pending', worker_id = NULL, lease_token = NULL, heartbeat_at = NULL,
      scheduled_at = pg_catalog.now() + v_delay * interval '1 second',
      reschedule_count = q.reschedule_count + 1, updated_at = pg_catalog.now()
  WHERE q.id = r.id
  RETURNING q.* INTO r;
  PERFORM public.job_queue_audit(r, 'RESCHEDULE', 'processing',
    pg_catalog.jsonb_build_object('scheduled_at', r.scheduled_at, 'reschedule_count', r.reschedule_count),
    v_reason, v_worker);
  RETURN true;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.reschedule_job(uuid, integer, text, boolean, text, uuid) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.reschedule_job(uuid, integer, text, boolean, text, uuid) TO service_role;

-- release_job (graceful shutdown): the holder hands the job back, pending
-- now, no attempt consumed, not counted as a reschedule.
-- +goose StatementBegin
CREATE FUNCTION public.release_job(p_job_id uuid, p_worker_id text, p_lease_token uuid DEFAULT NULL)
  RETURNS boolean
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  r public.job_queue;
BEGIN
  UPDATE public.job_queue q
  SET status = 'pending', worker_id = NULL, lease_token = NULL, heartbeat_at = NULL,
      scheduled_at = pg_catalog.now(), updated_at = pg_catalog.now()
  WHERE q.id = p_job_id AND q.status = 'processing' AND q.worker_id = p_worker_id
    AND (p_lease_token IS NULL OR q.lease_token = p_lease_token)
  RETURNING q.* INTO r;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  PERFORM public.release_job_capacity(r.id);
  PERFORM public.job_queue_audit(r, 'RELEASE', 'processing', NULL, 'released by worker', p_worker_id);
  RETURN true;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.release_job(uuid, text, uuid) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.release_job(uuid, text, uuid) TO service_role;

-- ---------------------------------------------------------------------------
-- reclaim
-- ---------------------------------------------------------------------------
-- reclaim_timed_out_jobs: processing jobs whose holder has not heartbeated
-- for worker.timeout_seconds go back to pending (scheduled now + a random
-- 0..worker.reclaim_jitter_max_seconds), counting the lost attempt, or to
-- dead letter when that was the last one. SKIP LOCKED: concurrent callers
-- (cron, v3ctl, workers) never reclaim the same job twice. Returns
-- {"reclaimed","dead_lettered","timeout_seconds","job_ids"}.
-- +goose StatementBegin
CREATE FUNCTION public.reclaim_timed_out_jobs(p_limit integer DEFAULT 1000) RETURNS jsonb
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  v_timeout integer := (public.get_system_config('worker.timeout_seconds', '1800'::jsonb) #>> '{}')::integer;
  v_jitter integer := (public.get_system_config('worker.reclaim_jitter_max_seconds', '60'::jsonb) #>> '{}')::integer;
  r public.job_queue;
  v_entry jsonb;
  v_worker text;
  v_reclaimed integer := 0;
  v_dead integer := 0;
  v_ids jsonb := '[]'::jsonb;
BEGIN
  IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 100000 THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('invalid reclaim limit %s', coalesce(p_limit::text, 'NULL')),
      HINT = 'reclaim 1 to 100000 jobs per call';
  END IF;
  FOR r IN
    SELECT * FROM public.job_queue q
    WHERE q.status = 'processing'
      AND q.heartbeat_at < pg_catalog.now() - v_timeout * interval '1 second'
    ORDER BY q.heartbeat_at
    LIMIT p_limit
    FOR UPDATE SKIP LOCKED
  LOOP
    v_worker := r.worker_id;
    r.retry_count := r.retry_count + 1;
    v_entry := pg_catalog.jsonb_build_object('attempt', r.retry_count, 'at', pg_catalog.now(), 'worker_id', v_worker,
      'error', pg_catalog.format('lease expired: no heartbeat for %s s (worker.timeout_seconds); reclaimed', v_timeout),
      'retryable', true);
    r.error_details := v_entry;
    r.error_history := public.job_queue_add_error(r.error_history, v_entry);
    PERFORM public.release_job_capacity(r.id);
    v_ids := v_ids || pg_catalog.to_jsonb(r.id);
    IF r.retry_count <= r.max_retries THEN
      UPDATE public.job_queue q
      SET status = 'pending', worker_id = NULL, lease_token = NULL, heartbeat_at = NULL,
          retry_count = r.retry_count, error_details = r.error_details, error_history = r.error_history,
          scheduled_at = pg_catalog.now() + pg_catalog.random() * v_jitter * interval '1 second',
          updated_at = pg_catalog.now()
      WHERE q.id = r.id
      RETURNING q.* INTO r;
      PERFORM public.job_queue_audit(r, 'RECLAIM', 'processing',
        pg_catalog.jsonb_build_object('previous_worker_id', v_worker, 'scheduled_at', r.scheduled_at),
        'heartbeat timeout', NULL);
      v_reclaimed := v_reclaimed + 1;
    ELSE
      DELETE FROM public.job_queue q WHERE q.id = r.id;
      r.status := 'dead_letter';
      r.lease_token := NULL;
      r.dead_letter_at := pg_catalog.now();
      r.completed_at := pg_catalog.now();
      r.updated_at := pg_catalog.now();
      PERFORM public.job_queue_finish(r);
      PERFORM public.job_queue_audit(r, 'DEAD_LETTER', 'processing',
        pg_catalog.jsonb_build_object('previous_worker_id', v_worker), 'heartbeat timeout, retries exhausted', NULL);
      v_dead := v_dead + 1;
    END IF;
  END LOOP;
  RETURN pg_catalog.jsonb_build_object('reclaimed', v_reclaimed, 'dead_lettered', v_dead,
                                       'timeout_seconds', v_timeout, 'job_ids', v_ids);
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.reclaim_timed_out_jobs(integer) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.reclaim_timed_out_jobs(integer) TO service_role;

-- ---------------------------------------------------------------------------
-- admin: cancel, requeue, purge
-- ---------------------------------------------------------------------------
-- cancel_job: an unfinished job (pending or processing) moves to the archive
-- as 'cancelled'; its holder, if any, loses the lease. False when the job is
-- unknown or already finished.
-- +goose StatementBegin
CREATE FUNCTION public.cancel_job(p_job_id uuid, p_reason text DEFAULT NULL, p_actor text DEFAULT NULL)
  RETURNS boolean
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  r public.job_queue;
  v_old text;
BEGIN
  DELETE FROM public.job_queue q WHERE q.id = p_job_id RETURNING q.* INTO r;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  v_old := r.status;
  r.status := 'cancelled';
  r.lease_token := NULL;
  r.completed_at := pg_catalog.now();
  r.updated_at := pg_catalog.now();
  PERFORM public.job_queue_finish(r);
  PERFORM public.release_job_capacity(r.id);
  PERFORM public.job_queue_audit(r, 'CANCEL', v_old, NULL,
    pg_catalog.left(nullif(pg_catalog.btrim(p_reason), ''), 500), nullif(p_actor, ''));
  RETURN true;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.cancel_job(uuid, text, text) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.cancel_job(uuid, text, text) TO service_role;

-- requeue_dead_letter_jobs: dead letters (and legacy 'failed' jobs) back to
-- pending with fresh attempts (retry_count and reschedule_count 0; error
-- history kept). Select by ids, or by type / lane / dead-lettered since; no
-- filter at all means every dead letter (up to p_limit). A job whose
-- idempotency key is in use by an unfinished job stays in the archive.
-- Returns the requeued ids.
-- +goose StatementBegin
CREATE FUNCTION public.requeue_dead_letter_jobs(
  p_job_ids uuid[] DEFAULT NULL,
  p_job_type text DEFAULT NULL,
  p_job_lane text DEFAULT NULL,
  p_since timestamptz DEFAULT NULL,
  p_limit integer DEFAULT 1000,
  p_actor text DEFAULT NULL,
  p_reason text DEFAULT NULL
) RETURNS SETOF uuid
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  a public.job_queue_archive;
  r public.job_queue;
  v_old text;
BEGIN
  IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 100000 THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('invalid requeue limit %s', coalesce(p_limit::text, 'NULL')),
      HINT = 'requeue 1 to 100000 jobs per call';
  END IF;
  IF p_job_type IS NOT NULL AND public.job_queue_valid_lanes(p_job_type) IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('unknown job type %L', p_job_type),
      HINT = 'valid job types: shell_file_processing, ai_processing, audit_cleanup, notification_delivery, report_generation, backup_operation, system_maintenance, semantic_processing, consent_verification, provider_verification, data_migration';
  END IF;
  FOR a IN
    SELECT * FROM public.job_queue_archive x
    WHERE x.status IN ('dead_letter', 'failed')
      AND (p_job_ids IS NULL OR x.id = ANY (p_job_ids))
      AND (p_job_type IS NULL OR x.job_type = p_job_type)
      AND (p_job_lane IS NULL OR x.job_lane = p_job_lane)
      AND (p_since IS NULL OR coalesce(x.dead_letter_at, x.completed_at) >= p_since)
    ORDER BY x.dead_letter_at NULLS LAST, x.id
    LIMIT p_limit
    FOR UPDATE SKIP LOCKED
  LOOP
    v_old := a.status;
    INSERT INTO public.job_queue AS q (id, job_type, job_lane, job_category, job_name, job_payload, priority,
      scheduled_at, max_retries, error_details, error_history, patient_id, shell_file_id,
      idempotency_key, correlation_id, created_at)
    VALUES (a.id, a.job_type, a.job_lane, a.job_category, a.job_name, a.job_payload, a.priority,
      pg_catalog.now(), a.max_retries, a.error_details, a.error_history, a.patient_id, a.shell_file_id,
      a.idempotency_key, a.correlation_id, a.created_at)
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING q.* INTO r;
    CONTINUE WHEN r.id IS NULL;
    DELETE FROM public.job_queue_archive x WHERE x.id = a.id;
    PERFORM public.job_queue_audit(r, 'REQUEUE', v_old, NULL,
      pg_catalog.left(nullif(pg_catalog.btrim(p_reason), ''), 500), nullif(p_actor, ''));
    PERFORM pg_catalog.pg_notify('v3_jobs',
      pg_catalog.jsonb_build_object('job_type', r.job_type, 'job_lane', r.job_lane)::text);
    RETURN NEXT r.id;
    r := NULL;
  END LOOP;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.requeue_dead_letter_jobs(uuid[], text, text, timestamptz, integer, text, text) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.requeue_dead_letter_jobs(uuid[], text, text, timestamptz, integer, text, text) TO service_role;

-- purge_finished_jobs: delete archived jobs that finished before now() -
-- p_older_than, at most p_limit per call (call again until it returns 0).
-- p_statuses defaults to completed and cancelled; dead letters and failed
-- jobs are purged only when listed. One audit row per call with the counts.
-- Returns {"purged", "by_status", "cutoff"}.
-- +goose StatementBegin
CREATE FUNCTION public.purge_finished_jobs(
  p_older_than interval DEFAULT '7 days',
  p_statuses text[] DEFAULT ARRAY['completed', 'cancelled'],
  p_limit integer DEFAULT 10000,
  p_actor text DEFAULT NULL
) RETURNS jsonb
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  v_cutoff timestamptz;
  v_by jsonb;
  v_total integer;
  v_bad text;
BEGIN
  IF p_older_than IS NULL OR p_older_than < interval '0' THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('invalid age %s', coalesce(p_older_than::text, 'NULL')),
      HINT = 'pass a non-negative interval such as 7 days';
  END IF;
  IF p_statuses IS NULL OR pg_catalog.cardinality(p_statuses) = 0 THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'no statuses to purge',
      HINT = 'valid statuses: completed, cancelled, dead_letter, failed';
  END IF;
  SELECT s INTO v_bad FROM pg_catalog.unnest(p_statuses) s
  WHERE s IS NULL OR s NOT IN ('completed', 'cancelled', 'dead_letter', 'failed') LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('cannot purge status %L', v_bad),
      HINT = 'valid statuses: completed, cancelled, dead_letter, failed (unfinished jobs are cancelled, not purged)';
  END IF;
  IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000000 THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('invalid purge limit %s', coalesce(p_limit::text, 'NULL')),
      HINT = 'purge 1 to 1000000 jobs per call';
  END IF;
  v_cutoff := pg_catalog.now() - p_older_than;
  WITH del AS (
    DELETE FROM public.job_queue_archive x
    WHERE x.id IN (
      SELECT y.id FROM public.job_queue_archive y
      WHERE y.completed_at < v_cutoff AND y.status = ANY (p_statuses)
      ORDER BY y.completed_at
      LIMIT p_limit
      FOR UPDATE SKIP LOCKED)
    RETURNING x.status
  ), c AS (
    SELECT d.status, pg_catalog.count(*) AS n FROM del d GROUP BY d.status
  )
  SELECT coalesce(pg_catalog.jsonb_object_agg(c.status, c.n), '{}'::jsonb), coalesce(sum(c.n), 0)::integer
  INTO v_by, v_total FROM c;
  IF v_total > 0 THEN
    PERFORM public.log_audit_event('job_queue_archive', NULL, 'PURGE', NULL,
      pg_catalog.jsonb_build_object('purged', v_total, 'by_status', v_by, 'cutoff', v_cutoff),
      pg_catalog.format('finished jobs older than %s', p_older_than), 'job_processing',
      NULL, NULL, NULL, nullif(p_actor, ''));
  END IF;
  RETURN pg_catalog.jsonb_build_object('purged', v_total, 'by_status', v_by, 'cutoff', v_cutoff);
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.purge_finished_jobs(interval, text[], integer, text) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.purge_finished_jobs(interval, text[], integer, text) TO service_role;

-- +goose Down
DROP FUNCTION IF EXISTS public.purge_finished_jobs(interval, text[], integer, text);
DROP FUNCTION IF EXISTS public.requeue_dead_letter_jobs(uuid[], text, text, timestamptz, integer, text, text);
DROP FUNCTION IF EXISTS public.cancel_job(uuid, text, text);
DROP FUNCTION IF EXISTS public.reclaim_timed_out_jobs(integer);
DROP FUNCTION IF EXISTS public.release_job(uuid, text, uuid);
DROP FUNCTION IF EXISTS public.reschedule_job(uuid, integer, text, boolean, text, uuid);
DROP FUNCTION IF EXISTS public.fail_job(uuid, text, text, boolean, uuid);
DROP FUNCTION IF EXISTS public.job_queue_add_error(jsonb, jsonb);
DROP FUNCTION IF EXISTS public.job_queue_backoff(integer);
DROP FUNCTION IF EXISTS public.complete_jobs_v3(text, uuid[], uuid[], jsonb[]);
DROP FUNCTION IF EXISTS public.complete_job(uuid, text, jsonb, uuid);
DROP FUNCTION IF EXISTS public.heartbeat_jobs_v3(text, uuid[], uuid[]);
DROP FUNCTION IF EXISTS public.update_job_heartbeat(uuid, text, uuid);
DROP FUNCTION IF EXISTS public.claim_next_job_v3(text, text[], text[]);
DROP FUNCTION IF EXISTS public.claim_jobs_v3(text, text[], text[], integer);
DROP FUNCTION IF EXISTS public.enqueue_job_v3(text, text, jsonb, text, integer, timestamptz, text, text, text, integer, uuid, uuid);
DROP FUNCTION IF EXISTS public.job_queue_finish(public.job_queue);
DROP FUNCTION IF EXISTS public.job_queue_check_worker(text);
DROP FUNCTION IF EXISTS public.job_queue_audit(public.job_queue, text, text, jsonb, text, text);
DROP FUNCTION IF EXISTS public.job_queue_valid_lanes(text);
DROP FUNCTION IF EXISTS public.job_queue_types();
DROP FUNCTION IF EXISTS public.release_job_capacity(uuid);
DROP FUNCTION IF EXISTS public.usage_enforce_enqueue(text, uuid, jsonb);
DELETE FROM public.system_configuration
  WHERE config_key IN ('queue.retry_base_delay_seconds', 'queue.retry_max_delay_seconds', 'queue.max_reschedules');
DROP VIEW IF EXISTS public.job_queue_all;
DROP TABLE IF EXISTS public.job_queue_archive;
DROP TABLE IF EXISTS public.job_queue;
