//go:build faults

package faults

import (
	"testing"
	"time"
)

// The long fault suite: make test-faults (go test -tags faults ./internal/faults/).
// Each runs on its own private PostgreSQL so that killing, restarting and
// pinning xmin touch nothing else.

var long = size{Jobs: 10000, Workers: 4, Concurrency: 8, HandlerDelay: 4 * time.Millisecond, Timeout: 4 * time.Minute}

func TestKillWorkersLong(t *testing.T) {
	_, url := ownServer(t)
	killWorkers(t, url, long)
}

func TestRestartPostgresLong(t *testing.T) {
	restartPostgres(t, long)
}

func TestTerminateBackendsLong(t *testing.T) {
	_, url := ownServer(t)
	terminateBackends(t, url, long)
}

func TestXminPinnedLong(t *testing.T) {
	_, url := ownServer(t)
	xminPinned(t, url, size{Jobs: 10000, Workers: 4, Concurrency: 8, Timeout: 4 * time.Minute})
}
