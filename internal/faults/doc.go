// Package faults is v3ctl's fault suite: real `v3ctl worker run` processes
// (built with go build) drain jobs whose handler is an http handler pointed
// at a ledger server inside the test, while the test SIGKILLs workers,
// restarts PostgreSQL, pins xmin with an open transaction or terminates the
// workers' connections. Afterwards every job must have been completed
// exactly once and none lost.
//
// The drain tests send SIGTERM (and a second signal) to a worker with jobs
// in flight and check the shutdown contract: no claims after the signal,
// running jobs completed once or handed back without consuming an attempt,
// exit 0 within the grace; after a second signal an immediate exit that
// leaves the jobs to reclaim.
//
// Quick variants (a few hundred jobs) run in the ordinary `go test ./...`;
// the long ones (10k jobs) carry the build tag "faults" and run with
// `make test-faults` (go test -tags faults ./internal/faults/).
//
// "Exactly once" here means: every enqueued job ends in the archive as
// completed (none pending, processing, dead-lettered or missing); the
// audit log holds exactly one COMPLETE row per job (written in the
// transaction that completes it); the ledger, which the handler writes for
// every execution independently of the database, holds the execution that
// completed it (same attempt); and a job executed more than once was taken
// back from a dead holder by the queue (reclaim, release or fail) in
// between. The ledger cannot be written in the completing transaction (the
// handler runs before it and outside it), so a second execution after a
// kill is allowed but never a second completion.
package faults
