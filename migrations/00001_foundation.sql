-- V3 foundation: Supabase compatibility (roles, auth schema), profiles and
-- access, shell files, the audit log and system configuration.
--
-- Conventions used by every migration:
--   * SECURITY DEFINER functions set search_path = '' and qualify every name.
--   * EXECUTE is revoked from PUBLIC, anon and authenticated by name (Supabase
--     grants new functions to both by default) and granted back only where a
--     caller needs it.
--   * Every table has RLS enabled; anon/authenticated get only what a policy
--     allows. Policies call (select auth.uid()) so it is evaluated once per query.

-- +goose Up

-- Supabase roles. Roles are cluster-wide: they are created when missing and
-- never dropped by a down migration (other databases may use them).
-- +goose StatementBegin
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'anon') THEN
    CREATE ROLE anon NOLOGIN NOINHERIT;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
    CREATE ROLE authenticated NOLOGIN NOINHERIT;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
    CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
  END IF;
END
$$;
-- +goose StatementEnd

-- The auth schema and its helpers, only where Supabase has not provided them.
-- Objects v3ctl creates carry the comment 'v3ctl:compat' so that the down
-- migration removes exactly those and never Supabase's own.
-- +goose StatementBegin
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'auth') THEN
    CREATE SCHEMA auth;
    COMMENT ON SCHEMA auth IS 'v3ctl:compat';
  END IF;

  IF to_regclass('auth.users') IS NULL THEN
    CREATE TABLE auth.users (
      id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
      email text UNIQUE,
      raw_user_meta_data jsonb NOT NULL DEFAULT '{}'::jsonb,
      created_at timestamptz NOT NULL DEFAULT now(),
      updated_at timestamptz NOT NULL DEFAULT now()
    );
    COMMENT ON TABLE auth.users IS 'v3ctl:compat';
  END IF;

  -- Like Supabase: prefer the legacy per-claim setting, then request.jwt.claims.
  IF to_regprocedure('auth.uid()') IS NULL THEN
    CREATE FUNCTION auth.uid() RETURNS uuid
      LANGUAGE sql STABLE
      AS $f$
        SELECT coalesce(
          nullif(current_setting('request.jwt.claim.sub', true), ''),
          (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
        )::uuid
      $f$;
    COMMENT ON FUNCTION auth.uid() IS 'v3ctl:compat';
  END IF;

  IF to_regprocedure('auth.role()') IS NULL THEN
    CREATE FUNCTION auth.role() RETURNS text
      LANGUAGE sql STABLE
      AS $f$
        SELECT coalesce(
          nullif(current_setting('request.jwt.claim.role', true), ''),
          (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
        )::text
      $f$;
    COMMENT ON FUNCTION auth.role() IS 'v3ctl:compat';
  END IF;

  IF to_regprocedure('auth.jwt()') IS NULL THEN
    CREATE FUNCTION auth.jwt() RETURNS jsonb
      LANGUAGE sql STABLE
      AS $f$
        SELECT coalesce(
          nullif(current_setting('request.jwt.claim', true), ''),
          nullif(current_setting('request.jwt.claims', true), '')
        )::jsonb
      $f$;
    COMMENT ON FUNCTION auth.jwt() IS 'v3ctl:compat';
  END IF;
END
$$;
-- +goose StatementEnd

GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION auth.uid(), auth.role(), auth.jwt() TO anon, authenticated, service_role;
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;

-- Shared trigger: keep updated_at current.
-- +goose StatementBegin
CREATE FUNCTION public.set_updated_at() RETURNS trigger
  LANGUAGE plpgsql
  SET search_path = ''
  AS $$
BEGIN
  NEW.updated_at := pg_catalog.now();
  RETURN NEW;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.set_updated_at() FROM PUBLIC, anon, authenticated;

-- ---------------------------------------------------------------------------
-- Profiles and access
-- ---------------------------------------------------------------------------
CREATE TABLE public.user_profiles (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  account_owner_id uuid NOT NULL REFERENCES auth.users(id) ON DELETE CASCADE,
  profile_type text NOT NULL DEFAULT 'self'
    CHECK (profile_type IN ('self', 'child', 'pet', 'dependent')),
  display_name text NOT NULL CHECK (length(btrim(display_name)) > 0),
  archived boolean NOT NULL DEFAULT false,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX user_profiles_account_owner_id_idx ON public.user_profiles (account_owner_id);
-- One 'self' profile per account.
CREATE UNIQUE INDEX user_profiles_one_self_idx ON public.user_profiles (account_owner_id)
  WHERE profile_type = 'self';
CREATE TRIGGER user_profiles_updated_at BEFORE UPDATE ON public.user_profiles
  FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();

CREATE TABLE public.profile_access_permissions (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  profile_id uuid NOT NULL REFERENCES public.user_profiles(id) ON DELETE CASCADE,
  user_id uuid NOT NULL REFERENCES auth.users(id) ON DELETE CASCADE,
  permission_level text NOT NULL DEFAULT 'read'
    CHECK (permission_level IN ('read', 'write', 'admin')),
  granted_by uuid REFERENCES auth.users(id) ON DELETE SET NULL,
  is_active boolean NOT NULL DEFAULT true,
  expires_at timestamptz,
  revoked_at timestamptz,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (profile_id, user_id)
);
CREATE INDEX profile_access_permissions_user_id_idx ON public.profile_access_permissions (user_id);
CREATE TRIGGER profile_access_permissions_updated_at BEFORE UPDATE ON public.profile_access_permissions
  FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();

-- has_profile_access: the account owns the (non-archived) profile, or holds an
-- active, unexpired, unrevoked share of it. NULL inputs never grant access.
-- +goose StatementBegin
CREATE FUNCTION public.has_profile_access(p_user_id uuid, p_profile_id uuid) RETURNS boolean
  LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = ''
  AS $$
  SELECT p_user_id IS NOT NULL AND p_profile_id IS NOT NULL AND (
    EXISTS (
      SELECT 1 FROM public.user_profiles up
      WHERE up.id = p_profile_id AND up.account_owner_id = p_user_id AND NOT up.archived
    )
    OR EXISTS (
      SELECT 1 FROM public.profile_access_permissions pap
      JOIN public.user_profiles up ON up.id = pap.profile_id
      WHERE pap.profile_id = p_profile_id AND pap.user_id = p_user_id
        AND pap.is_active AND pap.revoked_at IS NULL
        AND (pap.expires_at IS NULL OR pap.expires_at > pg_catalog.now())
        AND NOT up.archived
    )
  )
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.has_profile_access(uuid, uuid) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.has_profile_access(uuid, uuid) TO authenticated, service_role;

-- ---------------------------------------------------------------------------
-- Documents
-- ---------------------------------------------------------------------------
CREATE TABLE public.shell_files (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  patient_id uuid NOT NULL REFERENCES public.user_profiles(id) ON DELETE CASCADE,
  uploaded_by uuid REFERENCES auth.users(id) ON DELETE SET NULL,
  filename text NOT NULL CHECK (length(filename) > 0),
  original_filename text,
  mime_type text NOT NULL,
  file_size_bytes bigint NOT NULL CHECK (file_size_bytes >= 0),
  storage_path text NOT NULL,
  status text NOT NULL DEFAULT 'uploaded' CHECK (status IN (
    'uploaded', 'processing', 'pass1_complete', 'pass2_complete', 'pass3_complete',
    'completed', 'failed', 'archived')),
  page_count integer CHECK (page_count IS NULL OR page_count >= 0),
  extracted_text text,
  processing_started_at timestamptz,
  processing_completed_at timestamptz,
  processing_job_id uuid,
  processing_error jsonb,
  idempotency_key text,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX shell_files_patient_id_idx ON public.shell_files (patient_id);
CREATE INDEX shell_files_uploaded_by_idx ON public.shell_files (uploaded_by);
-- An upload retried with the same key lands once (per profile).
CREATE UNIQUE INDEX shell_files_idempotency_key_idx ON public.shell_files (patient_id, idempotency_key)
  WHERE idempotency_key IS NOT NULL;
CREATE TRIGGER shell_files_updated_at BEFORE UPDATE ON public.shell_files
  FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();

-- ---------------------------------------------------------------------------
-- Audit
-- ---------------------------------------------------------------------------
CREATE TABLE public.audit_log (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  table_name text NOT NULL,
  record_id text,
  operation text NOT NULL,
  old_values jsonb,
  new_values jsonb,
  changed_by text,
  changed_at timestamptz NOT NULL DEFAULT now(),
  reason text,
  compliance_category text,
  patient_id uuid,
  correlation_id text,
  job_id uuid
);
CREATE INDEX audit_log_changed_at_idx ON public.audit_log (changed_at);
CREATE INDEX audit_log_table_record_idx ON public.audit_log (table_name, record_id);
CREATE INDEX audit_log_job_id_idx ON public.audit_log (job_id) WHERE job_id IS NOT NULL;
CREATE INDEX audit_log_patient_id_idx ON public.audit_log (patient_id) WHERE patient_id IS NOT NULL;

-- log_audit_event writes one audit row and returns its id. It validates its
-- input and never swallows a failure: if the row cannot be written the error
-- propagates and the caller's transaction rolls back with it.
-- The actor defaults to the v3ctl.actor setting, then the JWT subject, then
-- the database role.
-- +goose StatementBegin
CREATE FUNCTION public.log_audit_event(
  p_table_name text,
  p_record_id text,
  p_operation text,
  p_old_values jsonb DEFAULT NULL,
  p_new_values jsonb DEFAULT NULL,
  p_reason text DEFAULT NULL,
  p_compliance_category text DEFAULT NULL,
  p_patient_id uuid DEFAULT NULL,
  p_correlation_id text DEFAULT NULL,
  p_job_id uuid DEFAULT NULL,
  p_changed_by text DEFAULT NULL
) RETURNS bigint
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  v_id bigint;
BEGIN
  IF p_table_name IS NULL OR pg_catalog.btrim(p_table_name) = '' THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'audit: table_name is required';
  END IF;
  IF p_operation IS NULL OR pg_catalog.btrim(p_operation) = '' THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'audit: operation is required';
  END IF;
  INSERT INTO public.audit_log (table_name, record_id, operation, old_values, new_values,
                                changed_by, reason, compliance_category, patient_id,
                                correlation_id, job_id)
  VALUES (p_table_name, p_record_id, p_operation, p_old_values, p_new_values,
          coalesce(nullif(p_changed_by, ''),
                   nullif(pg_catalog.current_setting('v3ctl.actor', true), ''),
                   nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub',
                   session_user::text),
          p_reason, p_compliance_category, p_patient_id, p_correlation_id, p_job_id)
  RETURNING id INTO v_id;
  RETURN v_id;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.log_audit_event(text, text, text, jsonb, jsonb, text, text, uuid, text, uuid, text)
  FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.log_audit_event(text, text, text, jsonb, jsonb, text, text, uuid, text, uuid, text)
  TO service_role;

-- ---------------------------------------------------------------------------
-- System configuration, feature flags and settings
-- ---------------------------------------------------------------------------
CREATE TABLE public.system_configuration (
  config_key text PRIMARY KEY CHECK (config_key ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$'),
  config_value jsonb NOT NULL,
  config_type text NOT NULL CHECK (config_type IN (
    'system', 'security', 'compliance', 'integration', 'ui', 'notification', 'feature_flag')),
  value_kind text NOT NULL CHECK (value_kind IN ('boolean', 'integer', 'number', 'string')),
  min_value numeric,
  max_value numeric,
  default_value jsonb NOT NULL,
  description text NOT NULL DEFAULT '',
  is_sensitive boolean NOT NULL DEFAULT false,
  requires_restart boolean NOT NULL DEFAULT false,
  updated_by text,
  updated_at timestamptz NOT NULL DEFAULT now(),
  CHECK ((config_type = 'feature_flag') = (value_kind = 'boolean' AND config_key LIKE 'features.%'))
);

-- Validates a value against the key's kind and range; raises 22023 with a
-- sentence naming the key, the value and what is accepted.
-- +goose StatementBegin
CREATE FUNCTION public.validate_system_config_value(p_key text, p_value jsonb) RETURNS void
  LANGUAGE plpgsql STABLE SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  c record;
  v_num numeric;
BEGIN
  SELECT * INTO c FROM public.system_configuration WHERE config_key = p_key;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('unknown configuration key %L', p_key),
      HINT = 'valid keys: ' || (SELECT pg_catalog.string_agg(config_key, ', ' ORDER BY config_key)
                                FROM public.system_configuration);
  END IF;
  IF p_value IS NULL OR pg_catalog.jsonb_typeof(p_value) = 'null' THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = pg_catalog.format('%s: a value is required', p_key);
  END IF;
  CASE c.value_kind
    WHEN 'boolean' THEN
      IF pg_catalog.jsonb_typeof(p_value) <> 'boolean' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
          MESSAGE = pg_catalog.format('%s must be a boolean, got %s', p_key, p_value::text),
          HINT = 'valid values: true, false';
      END IF;
    WHEN 'integer', 'number' THEN
      IF pg_catalog.jsonb_typeof(p_value) <> 'number' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
          MESSAGE = pg_catalog.format('%s must be a%s %s, got %s', p_key,
                      CASE WHEN c.value_kind = 'integer' THEN 'n' ELSE '' END, c.value_kind, p_value::text);
      END IF;
      v_num := (p_value #>> '{}')::numeric;
      IF c.value_kind = 'integer' AND v_num <> pg_catalog.trunc(v_num) THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
          MESSAGE = pg_catalog.format('%s must be an integer, got %s', p_key, p_value::text);
      END IF;
      IF (c.min_value IS NOT NULL AND v_num < c.min_value) OR (c.max_value IS NOT NULL AND v_num > c.max_value) THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
          MESSAGE = pg_catalog.format('%s must be between %s and %s, got %s', p_key,
                      coalesce(c.min_value::text, '-infinity'), coalesce(c.max_value::text, 'infinity'), p_value::text);
      END IF;
    WHEN 'string' THEN
      IF pg_catalog.jsonb_typeof(p_value) <> 'string' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
          MESSAGE = pg_catalog.format('%s must be a string, got %s', p_key, p_value::text);
      END IF;
  END CASE;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.validate_system_config_value(text, jsonb) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.validate_system_config_value(text, jsonb) TO service_role;

-- Every change to system_configuration (through set_system_config or a
-- direct UPDATE) is validated and audited in the same transaction.
-- +goose StatementBegin
CREATE FUNCTION public.system_configuration_audit() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
BEGIN
  IF TG_OP = 'UPDATE' THEN
    IF NEW.config_value IS DISTINCT FROM OLD.config_value THEN
      PERFORM public.validate_system_config_value(NEW.config_key, NEW.config_value);
    END IF;
    NEW.updated_at := pg_catalog.now();
    NEW.updated_by := coalesce(nullif(pg_catalog.current_setting('v3ctl.actor', true), ''),
                               session_user::text);
    PERFORM public.log_audit_event(
      'system_configuration', OLD.config_key, 'UPDATE',
      pg_catalog.jsonb_build_object('config_value', OLD.config_value),
      pg_catalog.jsonb_build_object('config_value', NEW.config_value),
      nullif(pg_catalog.current_setting('v3ctl.reason', true), ''),
      CASE WHEN NEW.config_type = 'feature_flag' THEN 'feature_flag' ELSE 'configuration' END);
  END IF;
  RETURN NEW;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.system_configuration_audit() FROM PUBLIC, anon, authenticated;
CREATE TRIGGER system_configuration_audit BEFORE UPDATE ON public.system_configuration
  FOR EACH ROW EXECUTE FUNCTION public.system_configuration_audit();

-- set_system_config: validate, update and audit one key; returns
-- {"key","old_value","new_value","changed"}. Setting the current value again
-- changes nothing and writes no audit row.
-- +goose StatementBegin
CREATE FUNCTION public.set_system_config(
  p_key text,
  p_value jsonb,
  p_actor text DEFAULT NULL,
  p_reason text DEFAULT NULL
) RETURNS jsonb
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = ''
  AS $$
DECLARE
  v_old jsonb;
BEGIN
  PERFORM public.validate_system_config_value(p_key, p_value);
  SELECT config_value INTO v_old FROM public.system_configuration WHERE config_key = p_key FOR UPDATE;
  IF v_old = p_value THEN
    RETURN pg_catalog.jsonb_build_object('key', p_key, 'old_value', v_old, 'new_value', p_value, 'changed', false);
  END IF;
  PERFORM pg_catalog.set_config('v3ctl.actor', coalesce(nullif(p_actor, ''), session_user::text), true);
  PERFORM pg_catalog.set_config('v3ctl.reason', coalesce(p_reason, ''), true);
  UPDATE public.system_configuration SET config_value = p_value WHERE config_key = p_key;
  RETURN pg_catalog.jsonb_build_object('key', p_key, 'old_value', v_old, 'new_value', p_value, 'changed', true);
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.set_system_config(text, jsonb, text, text) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.set_system_config(text, jsonb, text, text) TO service_role;

-- get_system_config: typed read used by the other SQL functions. Falls back to
-- p_default when the key is missing.
-- +goose StatementBegin
CREATE FUNCTION public.get_system_config(p_key text, p_default jsonb DEFAULT NULL) RETURNS jsonb
  LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = ''
  AS $$
  SELECT coalesce((SELECT config_value FROM public.system_configuration WHERE config_key = p_key), p_default)
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.get_system_config(text, jsonb) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.get_system_config(text, jsonb) TO service_role;

-- get_feature_flags: the frontend's read of the features.* flags as one JSON
-- object of real booleans (the table itself stays closed to browsers).
-- +goose StatementBegin
CREATE FUNCTION public.get_feature_flags() RETURNS jsonb
  LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = ''
  AS $$
  SELECT coalesce(pg_catalog.jsonb_object_agg(pg_catalog.substr(config_key, 10), config_value), '{}'::jsonb)
  FROM public.system_configuration
  WHERE config_type = 'feature_flag' AND NOT is_sensitive
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION public.get_feature_flags() FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.get_feature_flags() TO anon, authenticated, service_role;

INSERT INTO public.system_configuration
  (config_key, config_value, default_value, config_type, value_kind, min_value, max_value, requires_restart, description)
VALUES
  ('worker.heartbeat_interval_seconds', '30', '30', 'system', 'integer', 1, 3600, false,
   'How often a worker renews the lease of its in-flight jobs.'),
  ('worker.timeout_seconds', '1800', '1800', 'system', 'integer', 1, 86400, false,
   'A job whose holder has not heartbeated for this long is reclaimed (long AI calls need a generous value).'),
  ('worker.reclaim_jitter_max_seconds', '60', '60', 'system', 'integer', 0, 3600, false,
   'Reclaimed jobs are rescheduled with a random delay up to this many seconds.'),
  ('queue.backpressure_delay_seconds', '30', '30', 'system', 'integer', 0, 86400, false,
   'Default delay when a worker hands a job back under backpressure.'),
  ('system.maintenance_mode', 'false', 'false', 'system', 'boolean', NULL, NULL, false,
   'When true, workers stop claiming new jobs; in-flight jobs finish.'),
  ('audit.retention_days', '2555', '2555', 'compliance', 'integer', 1, 36500, false,
   'Audit rows older than this are removed by the audit_cleanup job (2555 days = 7 years).'),
  ('features.usage_tracking_enabled', 'true', 'true', 'feature_flag', 'boolean', NULL, NULL, false,
   'Record usage events and aggregates.'),
  ('features.billing_enabled', 'false', 'false', 'feature_flag', 'boolean', NULL, NULL, false,
   'Enforce plan limits: refuse uploads and jobs that would exceed a hard limit.'),
  ('features.upgrade_prompts_enabled', 'false', 'false', 'feature_flag', 'boolean', NULL, NULL, false,
   'Show upgrade prompts in the app when a limit is near.');

-- ---------------------------------------------------------------------------
-- Grants and row level security
-- ---------------------------------------------------------------------------
ALTER TABLE public.user_profiles ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.profile_access_permissions ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.shell_files ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.system_configuration ENABLE ROW LEVEL SECURITY;

REVOKE ALL ON public.user_profiles, public.profile_access_permissions, public.shell_files,
              public.audit_log, public.system_configuration FROM PUBLIC, anon, authenticated;
GRANT ALL ON public.user_profiles, public.profile_access_permissions, public.shell_files,
             public.audit_log, public.system_configuration TO service_role;

-- A signed-in user reads the profiles they own or were given access to, and
-- manages the profiles of their own account.
GRANT SELECT, INSERT, UPDATE ON public.user_profiles TO authenticated;
CREATE POLICY user_profiles_select ON public.user_profiles FOR SELECT TO authenticated
  USING (account_owner_id = (SELECT auth.uid()) OR public.has_profile_access((SELECT auth.uid()), id));
CREATE POLICY user_profiles_insert ON public.user_profiles FOR INSERT TO authenticated
  WITH CHECK (account_owner_id = (SELECT auth.uid()));
CREATE POLICY user_profiles_update ON public.user_profiles FOR UPDATE TO authenticated
  USING (account_owner_id = (SELECT auth.uid()))
  WITH CHECK (account_owner_id = (SELECT auth.uid()));

-- Shares: the grantee sees their grants; the owner of the profile sees and
-- manages the grants on it.
GRANT SELECT, INSERT, UPDATE, DELETE ON public.profile_access_permissions TO authenticated;
CREATE POLICY profile_access_permissions_select ON public.profile_access_permissions FOR SELECT TO authenticated
  USING (user_id = (SELECT auth.uid())
         OR profile_id IN (SELECT up.id FROM public.user_profiles up WHERE up.account_owner_id = (SELECT auth.uid())));
CREATE POLICY profile_access_permissions_owner_write ON public.profile_access_permissions FOR ALL TO authenticated
  USING (profile_id IN (SELECT up.id FROM public.user_profiles up WHERE up.account_owner_id = (SELECT auth.uid())))
  WITH CHECK (profile_id IN (SELECT up.id FROM public.user_profiles up WHERE up.account_owner_id = (SELECT auth.uid())));

-- Shell files: readable by whoever can access the profile; uploads go
-- through the Edge Function (service role), so no write policy for users.
GRANT SELECT ON public.shell_files TO authenticated;
CREATE POLICY shell_files_select ON public.shell_files FOR SELECT TO authenticated
  USING (public.has_profile_access((SELECT auth.uid()), patient_id));

-- audit_log and system_configuration: no policies; closed to anon and
-- authenticated (flags are read through get_feature_flags()).

-- +goose Down
DROP FUNCTION IF EXISTS public.get_feature_flags();
DROP FUNCTION IF EXISTS public.get_system_config(text, jsonb);
DROP FUNCTION IF EXISTS public.set_system_config(text, jsonb, text, text);
DROP TABLE IF EXISTS public.system_configuration;
DROP FUNCTION IF EXISTS public.system_configuration_audit();
DROP FUNCTION IF EXISTS public.validate_system_config_value(text, jsonb);
DROP FUNCTION IF EXISTS public.log_audit_event(text, text, text, jsonb, jsonb, text, text, uuid, text, uuid, text);
DROP TABLE IF EXISTS public.audit_log;
DROP TABLE IF EXISTS public.shell_files;
DROP TABLE IF EXISTS public.profile_access_permissions;
DROP TABLE IF EXISTS public.user_profiles;
DROP FUNCTION IF EXISTS public.has_profile_access(uuid, uuid);
DROP FUNCTION IF EXISTS public.set_updated_at();
-- Remove only the auth objects this migration created (marked 'v3ctl:compat').
-- +goose StatementBegin
DO $$
BEGIN
  IF to_regprocedure('auth.jwt()') IS NOT NULL
     AND obj_description('auth.jwt()'::regprocedure, 'pg_proc') = 'v3ctl:compat' THEN
    DROP FUNCTION auth.jwt();
  END IF;
  IF to_regprocedure('auth.role()') IS NOT NULL
     AND obj_description('auth.role()'::regprocedure, 'pg_proc') = 'v3ctl:compat' THEN
    DROP FUNCTION auth.role();
  END IF;
  IF to_regprocedure('auth.uid()') IS NOT NULL
     AND obj_description('auth.uid()'::regprocedure, 'pg_proc') = 'v3ctl:compat' THEN
    DROP FUNCTION auth.uid();
  END IF;
  IF to_regclass('auth.users') IS NOT NULL
     AND obj_description('auth.users'::regclass, 'pg_class') = 'v3ctl:compat' THEN
    DROP TABLE auth.users;
  END IF;
  IF EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n WHERE n.nspname = 'auth'
             AND obj_description(n.oid, 'pg_namespace') = 'v3ctl:compat') THEN
    DROP SCHEMA auth;
  END IF;
END
$$;
-- +goose StatementEnd
