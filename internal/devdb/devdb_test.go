package devdb

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestLifecycle runs a real instance in a temporary directory: up, up again
// (no-op), stale pid file after an immediate stop, down, reset.
func TestLifecycle(t *testing.T) {
	if _, err := FindBinDir(); err != nil {
		t.Skip(err)
	}
	if testing.Short() {
		t.Skip("starts a PostgreSQL server")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	base := t.TempDir()
	if os.Geteuid() == 0 {
		// t.TempDir is private to root; the server user needs to traverse it.
		if err := os.Chmod(base, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Dir(base), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	o := Options{Dir: filepath.Join(base, "inst"), Fast: true}

	s, started, err := Up(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if !started || !s.Running || s.Port == 0 {
		t.Fatalf("first up: started=%v state=%+v", started, s)
	}
	defer Down(context.Background(), o)
	ping(t, ctx, s)

	s2, started, err := Up(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if started || s2.Port != s.Port {
		t.Fatalf("second up should be a no-op: started=%v port %d vs %d", started, s2.Port, s.Port)
	}

	// Kill the server hard and leave a postmaster.pid naming a dead process.
	pid := postmasterPID(s.DataDir)
	if pid <= 0 {
		t.Fatal("no postmaster.pid")
	}
	p, _ := os.FindProcess(pid)
	_ = p.Kill()
	for i := 0; i < 100 && processAlive(pid); i++ {
		time.Sleep(50 * time.Millisecond)
	}
	pidFile := filepath.Join(s.DataDir, "postmaster.pid")
	if _, err := os.Stat(pidFile); err != nil {
		// Write a stale pid file naming a process that does not exist.
		_ = os.WriteFile(pidFile, []byte(strconv.Itoa(999999)+"\n"), 0o600)
	}
	st, err := Status(ctx, o)
	if err != nil || st.Running {
		t.Fatalf("status after kill: %+v %v", st, err)
	}
	s3, started, err := Up(ctx, o)
	if err != nil {
		t.Fatalf("up with a stale pid file: %v", err)
	}
	if !started {
		t.Fatal("up after kill should start the server")
	}
	ping(t, ctx, s3)

	if _, stopped, err := Down(ctx, o); err != nil || !stopped {
		t.Fatalf("down: stopped=%v err=%v", stopped, err)
	}
	if _, stopped, err := Down(ctx, o); err != nil || stopped {
		t.Fatalf("second down should be a no-op: stopped=%v err=%v", stopped, err)
	}
	if err := Reset(ctx, o); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.DataDir); !os.IsNotExist(err) {
		t.Fatalf("reset left the data directory: %v", err)
	}
}

func ping(t *testing.T, ctx context.Context, s *State) {
	t.Helper()
	conn, err := pgx.Connect(ctx, s.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var one int
	if err := conn.QueryRow(ctx, "select 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("select 1: %v", err)
	}
}

func TestFindBinDirEnv(t *testing.T) {
	t.Setenv("V3CTL_PG_BINDIR", t.TempDir())
	if _, err := FindBinDir(); err == nil {
		t.Fatal("an empty V3CTL_PG_BINDIR should be refused")
	}
}
