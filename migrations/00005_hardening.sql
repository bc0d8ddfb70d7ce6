-- Cross-cutting security fixes found by the security matrix
-- (internal/security). Each fix names the probe that proves it.

-- +goose Up

-- has_profile_access takes an account id, and authenticated may execute it
-- (the RLS policies call it). Without a caller check any signed-in user could
-- ask "may account X open profile Y?" for anyone else, learning who shares
-- which health record with whom. A browser caller (role anon/authenticated,
-- as PostgREST sets it, or JWT role anon/authenticated) may now only ask
-- about itself; any other question answers false. Policies and
-- get_user_usage_status always pass auth.uid() and are unaffected.
-- Probe: "A cannot ask whether B may open B's profile".
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.has_profile_access(p_user_id uuid, p_profile_id uuid) RETURNS boolean
  LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = ''
  AS $$
  SELECT p_user_id IS NOT NULL AND p_profile_id IS NOT NULL
  AND (
    p_user_id = auth.uid()
    OR NOT (coalesce(pg_catalog.current_setting('role', true), 'none') IN ('anon', 'authenticated')
            OR (nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb ->> 'role') IN ('anon', 'authenticated'))
  )
  AND (
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

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.has_profile_access(p_user_id uuid, p_profile_id uuid) RETURNS boolean
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
