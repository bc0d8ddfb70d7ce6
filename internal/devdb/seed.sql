-- Demo data for `v3ctl dev seed`: three fictional accounts, their profiles,
-- a share, plans, and six uploaded documents (the files in
-- examples/documents, storage_path relative to that directory).
--
-- Idempotent: fixed ids and ON CONFLICT DO NOTHING, so a second run adds
-- nothing. Upload usage is recorded once per file (the usage ledger is keyed
-- by shell file), and a plan is only assigned to an account that has none,
-- so a plan changed by hand afterwards is kept.
--
-- Ids: de300000-… accounts, de300001-… profiles, de300002-… shell files,
-- de300003-… shares.

-- Accounts (auth.users).
INSERT INTO auth.users (id, email, raw_user_meta_data) VALUES
  ('de300000-0000-4000-8000-00000000a11c', 'alice@example.test', '{"full_name": "Alice Demo", "demo": true}'),
  ('de300000-0000-4000-8000-000000000b0b', 'bob@example.test', '{"full_name": "Bob Demo", "demo": true}'),
  ('de300000-0000-4000-8000-00000000ca01', 'carol@example.test', '{"full_name": "Carol Demo", "demo": true}')
ON CONFLICT DO NOTHING;

-- Profiles: alice is a family account (herself and a child); bob and carol
-- have one profile each.
INSERT INTO public.user_profiles (id, account_owner_id, profile_type, display_name) VALUES
  ('de300001-0000-4000-8000-00000000a11c', 'de300000-0000-4000-8000-00000000a11c', 'self', 'Alice Demo'),
  ('de300001-0000-4000-8000-0000a11cc41d', 'de300000-0000-4000-8000-00000000a11c', 'child', 'Demo Child'),
  ('de300001-0000-4000-8000-000000000b0b', 'de300000-0000-4000-8000-000000000b0b', 'self', 'Bob Demo'),
  ('de300001-0000-4000-8000-00000000ca01', 'de300000-0000-4000-8000-00000000ca01', 'self', 'Carol Demo')
ON CONFLICT DO NOTHING;

-- A share: alice gives bob write access to her child's profile.
INSERT INTO public.profile_access_permissions (id, profile_id, user_id, permission_level, granted_by) VALUES
  ('de300003-0000-4000-8000-000000000001', 'de300001-0000-4000-8000-0000a11cc41d',
   'de300000-0000-4000-8000-000000000b0b', 'write', 'de300000-0000-4000-8000-00000000a11c')
ON CONFLICT DO NOTHING;

-- Uploaded documents. Sizes and page counts (form-feed separated pages)
-- match the files in examples/documents.
INSERT INTO public.shell_files (id, patient_id, uploaded_by, filename, original_filename, mime_type,
                                file_size_bytes, storage_path, page_count, idempotency_key) VALUES
  ('de300002-0000-4000-8000-000000000001', 'de300001-0000-4000-8000-00000000a11c', 'de300000-0000-4000-8000-00000000a11c',
   'lab-results-2026-03.txt', 'lab-results-2026-03.txt', 'text/plain', 655, 'lab-results-2026-03.txt', 2, 'demo-seed-1'),
  ('de300002-0000-4000-8000-000000000002', 'de300001-0000-4000-8000-00000000a11c', 'de300000-0000-4000-8000-00000000a11c',
   'imaging-report.txt', 'imaging-report.txt', 'text/plain', 243, 'imaging-report.txt', 1, 'demo-seed-2'),
  ('de300002-0000-4000-8000-000000000003', 'de300001-0000-4000-8000-0000a11cc41d', 'de300000-0000-4000-8000-00000000a11c',
   'vaccination-record.txt', 'vaccination-record.txt', 'text/plain', 261, 'vaccination-record.txt', 1, 'demo-seed-3'),
  ('de300002-0000-4000-8000-000000000004', 'de300001-0000-4000-8000-000000000b0b', 'de300000-0000-4000-8000-000000000b0b',
   'prescription.txt', 'prescription.txt', 'text/plain', 247, 'prescription.txt', 1, 'demo-seed-4'),
  ('de300002-0000-4000-8000-000000000005', 'de300001-0000-4000-8000-000000000b0b', 'de300000-0000-4000-8000-000000000b0b',
   'referral-letter.txt', 'referral-letter.txt', 'text/plain', 276, 'referral-letter.txt', 2, 'demo-seed-5'),
  ('de300002-0000-4000-8000-000000000006', 'de300001-0000-4000-8000-00000000ca01', 'de300000-0000-4000-8000-00000000ca01',
   'discharge-summary.txt', 'discharge-summary.txt', 'text/plain', 426, 'discharge-summary.txt', 1, 'demo-seed-6')
ON CONFLICT DO NOTHING;

-- Upload usage, as the upload path records it (duplicates count nothing).
SELECT public.track_shell_file_upload_usage(sf.patient_id, sf.id, sf.file_size_bytes, sf.page_count)
FROM public.shell_files sf
WHERE sf.id::text LIKE 'de300002-%'
ORDER BY sf.id;

-- Plans: alice's family on premium, bob on basic; carol stays on free.
SELECT public.set_account_plan(p.account_id, p.plan_key, NULL, 'demo seed')
FROM (VALUES ('de300000-0000-4000-8000-00000000a11c'::uuid, 'premium'),
             ('de300000-0000-4000-8000-000000000b0b'::uuid, 'basic')) AS p (account_id, plan_key)
WHERE NOT EXISTS (SELECT 1 FROM public.account_plans ap WHERE ap.account_id = p.account_id);
