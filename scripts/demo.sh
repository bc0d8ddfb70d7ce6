#!/usr/bin/env bash
# The README's main job: a private PostgreSQL, the V3 schema, and a look at it.
# Safe to run again: every step is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
V3CTL=./bin/v3ctl
step() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }

step "Starting the private dev PostgreSQL"
$V3CTL dev up
step "Applying the V3 schema"
$V3CTL migrate up
$V3CTL migrate status
step "Feature flags"
$V3CTL flags list
step "Settings"
$V3CTL settings list
printf '\nDone. Connection URL: %s\n' "$($V3CTL dev url)" >&2
