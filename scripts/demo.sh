#!/usr/bin/env bash
# The README's main job: a private PostgreSQL with the V3 schema, fictional
# demo data, a batch of jobs run by a worker with the example handler, and
# the resulting queue, rate-limit and usage numbers.
# Safe to run again: the data is seeded idempotently and every run adds and
# processes a new batch of jobs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
V3CTL=$ROOT/bin/v3ctl
HANDLER=$ROOT/bin/extract-text

bold=$'\033[1m' dim=$'\033[2m' reset=$'\033[0m'
if [[ ! -t 2 || -n "${NO_COLOR:-}" ]]; then bold='' dim='' reset=''; fi
step() { printf '\n%s==> %s%s\n' "$bold" "$*" "$reset" >&2; }
# run shows a command (as you would type it) and runs it.
run() {
  local shown=v3ctl arg
  for arg; do
    if [[ $arg =~ ^[][A-Za-z0-9_./:=@,+-]+$ ]]; then shown+=" $arg"; else shown+=" \"$arg\""; fi
  done
  printf '%s$ %s%s\n' "$dim" "$shown" "$reset" >&2
  "$V3CTL" "$@"
}

for bin in "$V3CTL" "$HANDLER"; do
  [[ -x $bin ]] || { echo "missing $bin: run make build (or make demo)" >&2; exit 1; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
started=$(date +%s)

step "1/5 Private dev PostgreSQL (127.0.0.1 only, data kept between runs)"
run dev up
# Every command below talks to the dev database, whatever else is configured.
V3CTL_DATABASE_URL=$("$V3CTL" dev url)
export V3CTL_DATABASE_URL
export V3CTL_ACTOR=demo

step "2/5 The V3 schema (job queue, rate limits, usage metering)"
run migrate up

step "3/5 Demo data: accounts, profiles, a share, plans, documents, and a batch of jobs"
# Retries back off for queue.retry_base_delay_seconds (30s by default); make
# the demo's retry come due within a second.
run settings set queue.retry_base_delay_seconds 1 --reason "demo: retry quickly"
run dev seed --jobs

step "4/5 A worker runs the batch with the example exec handler, then exits"
cat >"$tmp/worker.yaml" <<EOF
# Job JSON on stdin; exit 0 = done, 75 = retry later, anything else = permanent.
# The handler opens each payload's storage_path under V3_DOCUMENT_ROOT.
worker:
  concurrency: 4
  poll_interval: 250ms
  handlers:
    shell_file_processing:
      kind: exec
      command: ["$HANDLER"]
      timeout: 30s
      env: {V3_DOCUMENT_ROOT: "$ROOT/examples/documents"}
    ai_processing:
      kind: exec
      command: ["$HANDLER"]
      timeout: 30s
      env: {V3_DOCUMENT_ROOT: "$ROOT/examples/documents"}
EOF
printf '%sworker config (%s):%s\n' "$dim" "$tmp/worker.yaml" "$reset" >&2
sed 's/^/    /' "$tmp/worker.yaml" >&2
# Log lines shortened: no timestamp, worker id or correlation id, short job ids.
run --config "$tmp/worker.yaml" worker run --exit-when-idle 3s 2>&1 |
  sed -E 's/^time=[^ ]+ //; s/ (worker_id|correlation_id)=[^ ]+//g; s/job_id=([0-9a-f]{8})[0-9a-f-]{28}/job=\1/' >&2

step "5/5 What happened"
window="$(($(date +%s) - started + 1))s"
run jobs stats --window "$window"
echo
run limits list
echo
run usage report
echo
run usage show alice@example.test

cat >&2 <<EOF

${bold}What you just saw${reset}
  * A private PostgreSQL ($("$V3CTL" dev url)) with the V3 schema.
  * Three fictional accounts: alice (a family: her and a child, premium plan,
    sharing the child's profile with bob), bob (basic) and carol (free), with
    six uploaded documents from examples/documents, metered as usage.
  * A batch of jobs on several lanes and priorities, run by 'v3ctl worker run'
    with examples/extract-text as an exec handler: the imaging report failed
    once and was retried, the "corrupt" referral letter went to the dead
    letter queue, the AI jobs got an offline stand-in summary.
  * jobs stats: this run's jobs by status, type and lane (dead letters add up
    over runs). limits list: the vendor rate limits all workers share (the
    offline demo calls no vendor, so they stay at 0). usage: files, pages and
    AI tokens per account against its plan.

${bold}Next${reset}
  v3ctl jobs list --status dead_letter     # the failed job; then: v3ctl jobs show <id>
  v3ctl jobs retry --all --dry-run         # what a retry of dead letters would do
  v3ctl usage set-plan carol@example.test basic
  v3ctl doctor                             # health checks of the whole schema
  psql "\$(v3ctl dev url)"                  # look around; 'make demo' again adds a new batch
  v3ctl dev down                           # stop the database (data is kept)
EOF
