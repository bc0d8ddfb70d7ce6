// Package devdb runs a private PostgreSQL server for development, demos and
// tests: initdb into a data directory, listening on 127.0.0.1 on a free port,
// using the server binaries already installed on the machine.
//
// When run as root the server runs as an unprivileged user (postgres, or
// nobody), since PostgreSQL refuses to run as root. Operations on one
// instance are serialised with a file lock, so concurrent "up" calls (several
// test binaries at once) are safe; "up" on a running instance is a no-op.
package devdb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrNoBinaries is returned when no PostgreSQL server binaries are found.
var ErrNoBinaries = errors.New("no PostgreSQL server binaries found (looked for initdb, pg_ctl and postgres on PATH, in `pg_config --bindir`, /usr/lib/postgresql/*/bin and Homebrew paths); install them: Debian/Ubuntu `apt-get install postgresql`, Fedora `dnf install postgresql-server`, macOS `brew install postgresql@16`; or set V3CTL_PG_BINDIR")

// ErrNotRunning is returned when an operation needs a running instance.
var ErrNotRunning = errors.New("the dev database is not running (start it with: v3ctl dev up)")

// Options select and tune an instance.
type Options struct {
	// Name of the instance; its directory is DefaultDir(Name) unless Dir is set.
	Name string
	// Dir overrides the instance directory.
	Dir string
	// Port to listen on; 0 picks a free port the first time and keeps it.
	Port int
	// Fast turns off durability (fsync, full_page_writes, synchronous_commit):
	// right for throwaway test clusters, wrong for anything you keep.
	Fast bool
	// Settings are extra postgresql.conf settings applied at start.
	Settings map[string]string
	// BinDir overrides binary discovery.
	BinDir string
}

// State is what the instance directory records about the server.
type State struct {
	Name      string    `json:"name" yaml:"name"`
	Dir       string    `json:"dir" yaml:"dir"`
	DataDir   string    `json:"data_dir" yaml:"data_dir"`
	BinDir    string    `json:"bin_dir" yaml:"bin_dir"`
	Version   string    `json:"version" yaml:"version"`
	Port      int       `json:"port" yaml:"port"`
	User      string    `json:"user" yaml:"user"`
	Database  string    `json:"database" yaml:"database"`
	Running   bool      `json:"running" yaml:"running"`
	PID       int       `json:"pid,omitempty" yaml:"pid,omitempty"`
	CreatedAt time.Time `json:"created_at" yaml:"created_at"`
}

// URL is the connection URL of the instance's default database.
func (s *State) URL() string { return s.URLFor(s.Database) }

// URLFor is the connection URL of the named database on the instance.
func (s *State) URLFor(database string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", s.User, s.Port, database)
}

const (
	superuser = "postgres"
	database  = "v3"
)

// DefaultDir is the directory of a named instance: $V3CTL_DEV_DIR/<name>, or
// under the user's data directory ($XDG_DATA_HOME/v3ctl or
// ~/.local/share/v3ctl; /var/lib/v3ctl when running as root, because the
// unprivileged server user cannot enter /root).
func DefaultDir(name string) string {
	if name == "" {
		name = "dev"
	}
	if d := os.Getenv("V3CTL_DEV_DIR"); d != "" {
		return filepath.Join(d, name)
	}
	if os.Geteuid() == 0 && runtime.GOOS != "windows" {
		return filepath.Join("/var/lib/v3ctl", name)
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "v3ctl", name)
	}
	if runtime.GOOS == "darwin" || runtime.GOOS == "windows" {
		if d, err := os.UserConfigDir(); err == nil {
			return filepath.Join(d, "v3ctl", name)
		}
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".local", "share", "v3ctl", name)
}

func (o Options) dir() string {
	if o.Dir != "" {
		return o.Dir
	}
	return DefaultDir(o.Name)
}

func (o Options) name() string {
	if o.Name == "" {
		return "dev"
	}
	return o.Name
}

// FindBinDir locates a directory holding initdb, pg_ctl and postgres.
// The newest version wins when several are installed.
func FindBinDir() (string, error) {
	if d := os.Getenv("V3CTL_PG_BINDIR"); d != "" {
		if hasServer(d) {
			return d, nil
		}
		return "", fmt.Errorf("V3CTL_PG_BINDIR=%s does not hold initdb, pg_ctl and postgres", d)
	}
	var candidates []string
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			candidates = append(candidates, filepath.Dir(r))
		}
		candidates = append(candidates, filepath.Dir(p))
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		candidates = append(candidates, strings.TrimSpace(string(out)))
	}
	var globbed []string
	for _, pat := range []string{
		"/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin",
		"/opt/homebrew/opt/postgresql@*/bin", "/usr/local/opt/postgresql@*/bin",
		"/opt/homebrew/bin", "/usr/local/bin", "/Applications/Postgres.app/Contents/Versions/*/bin",
	} {
		m, _ := filepath.Glob(pat)
		globbed = append(globbed, m...)
	}
	sort.Slice(globbed, func(i, j int) bool { return versionKey(globbed[i]) > versionKey(globbed[j]) })
	candidates = append(candidates, globbed...)
	for _, d := range candidates {
		if hasServer(d) {
			return d, nil
		}
	}
	return "", ErrNoBinaries
}

func versionKey(path string) int {
	for _, part := range strings.FieldsFunc(path, func(r rune) bool { return r == '/' || r == '@' || r == '-' }) {
		if n, err := strconv.Atoi(part); err == nil {
			return n
		}
	}
	return 0
}

func hasServer(dir string) bool {
	for _, b := range []string{"initdb", "pg_ctl", "postgres"} {
		fi, err := os.Stat(filepath.Join(dir, b))
		if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// serverUser picks the account the server runs as: the current user, or an
// unprivileged one when running as root.
type serverUser struct {
	name     string
	uid, gid int
	root     bool
}

func currentServerUser() (serverUser, error) {
	if os.Geteuid() != 0 {
		u, err := user.Current()
		if err != nil {
			return serverUser{}, err
		}
		return serverUser{name: u.Username, uid: os.Geteuid(), gid: os.Getegid()}, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		return serverUser{name: name, uid: uid, gid: gid, root: true}, nil
	}
	return serverUser{}, errors.New("running as root and no unprivileged user (postgres or nobody) exists to run the server as; create one or run v3ctl as a normal user")
}

func (su serverUser) cmd(ctx context.Context, name string, args ...string) *exec.Cmd {
	c := exec.CommandContext(ctx, name, args...)
	if su.root {
		c.Env = append(os.Environ(), "HOME=/tmp", "USER="+su.name, "LOGNAME="+su.name)
	}
	setServerProcAttrs(c, su)
	return c
}

func (su serverUser) chown(path string) error {
	if !su.root {
		return nil
	}
	return filepath.Walk(path, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, su.uid, su.gid)
	})
}

func statePath(dir string) string { return filepath.Join(dir, "state.json") }

func readState(dir string) (*State, error) {
	b, err := os.ReadFile(statePath(dir))
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("corrupt %s: %w", statePath(dir), err)
	}
	return &s, nil
}

func writeState(s *State) error {
	b, _ := json.MarshalIndent(s, "", "  ")
	tmp := statePath(s.Dir) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, statePath(s.Dir))
}

// lock takes an exclusive lock on the instance directory.
func lock(dir string) (func(), error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := lockFile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { unlockFile(f); f.Close() }, nil
}

// Status reports the instance's state without changing anything. A missing
// instance returns a State with Running false and an empty DataDir.
func Status(ctx context.Context, o Options) (*State, error) {
	dir := o.dir()
	s, err := readState(dir)
	if errors.Is(err, os.ErrNotExist) {
		return &State{Name: o.name(), Dir: dir}, nil
	}
	if err != nil {
		return nil, err
	}
	s.Running, s.PID = running(ctx, s)
	return s, nil
}

// running checks the postmaster.pid of the data directory and that the
// server answers on its port.
func running(ctx context.Context, s *State) (bool, int) {
	pid := postmasterPID(s.DataDir)
	if pid <= 0 || !processAlive(pid) {
		return false, 0
	}
	conn, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", s.Port))
	if err != nil {
		return false, pid
	}
	conn.Close()
	return true, pid
}

func postmasterPID(dataDir string) int {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(line))
	return pid
}

func processAlive(pid int) bool {
	p, err := os.FindProcess(pid)
	if err != nil {
		return false
	}
	err = p.Signal(syscall.Signal(0))
	return err == nil || errors.Is(err, syscall.EPERM)
}

// Up initialises (first time) and starts the instance, creating its default
// database. It returns the state and whether it started the server (false
// when it was already running).
func Up(ctx context.Context, o Options) (*State, bool, error) {
	dir := o.dir()
	unlock, err := lock(dir)
	if err != nil {
		return nil, false, err
	}
	defer unlock()

	su, err := currentServerUser()
	if err != nil {
		return nil, false, err
	}
	s, err := readState(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, false, err
	}
	if s != nil {
		if ok, _ := running(ctx, s); ok {
			s.Running, s.PID = true, postmasterPID(s.DataDir)
			return s, false, nil
		}
	}
	bin := o.BinDir
	if bin == "" {
		if s != nil && hasServer(s.BinDir) {
			bin = s.BinDir
		} else if bin, err = FindBinDir(); err != nil {
			return nil, false, err
		}
	}
	if s == nil || !fileExists(filepath.Join(s.DataDir, "PG_VERSION")) {
		s, err = initdb(ctx, o, dir, bin, su)
		if err != nil {
			return nil, false, err
		}
	}
	s.BinDir = bin
	if err := start(ctx, o, s, su); err != nil {
		return nil, false, err
	}
	if err := createDatabase(ctx, s, s.Database); err != nil {
		return nil, false, err
	}
	s.Running, s.PID = true, postmasterPID(s.DataDir)
	return s, true, nil
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func initdb(ctx context.Context, o Options, dir, bin string, su serverUser) (*State, error) {
	data := filepath.Join(dir, "data")
	_ = os.RemoveAll(data)
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, err
	}
	if su.root {
		// The server user must be able to traverse to the data directory.
		for p := dir; p != "/" && p != "."; p = filepath.Dir(p) {
			if fi, err := os.Stat(p); err == nil && fi.Mode().Perm()&0o001 == 0 {
				return nil, fmt.Errorf("%s is not searchable by the server user %s; choose another directory with V3CTL_DEV_DIR", p, su.name)
			}
		}
		if err := su.chown(dir); err != nil {
			return nil, err
		}
	}
	out, err := su.cmd(ctx, filepath.Join(bin, "initdb"),
		"-D", data, "-U", superuser, "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("initdb failed: %w\n%s", err, tail(string(out), 20))
	}
	version := strings.TrimSpace(readFile(filepath.Join(data, "PG_VERSION")))
	s := &State{Name: o.name(), Dir: dir, DataDir: data, BinDir: bin, Version: version,
		User: superuser, Database: database, CreatedAt: time.Now().UTC()}
	return s, writeState(s)
}

func readFile(p string) string { b, _ := os.ReadFile(p); return string(b) }

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func portFree(port int) bool {
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

func start(ctx context.Context, o Options, s *State, su serverUser) error {
	// A postmaster.pid left by a killed server whose process is gone is stale:
	// remove it so the server can start.
	if pid := postmasterPID(s.DataDir); pid > 0 && !processAlive(pid) {
		_ = os.Remove(filepath.Join(s.DataDir, "postmaster.pid"))
	}
	switch {
	case o.Port != 0:
		s.Port = o.Port
	case s.Port == 0 || !portFree(s.Port):
		p, err := freePort()
		if err != nil {
			return err
		}
		s.Port = p
	}
	settings := map[string]string{
		"listen_addresses":        "'127.0.0.1'",
		"port":                    strconv.Itoa(s.Port),
		"unix_socket_directories": "''",
		"max_connections":         "300",
		"shared_buffers":          "128MB",
		"logging_collector":       "off",
	}
	if o.Fast {
		settings["fsync"] = "off"
		settings["full_page_writes"] = "off"
		settings["synchronous_commit"] = "off"
	}
	for k, v := range o.Settings {
		settings[k] = v
	}
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var conf strings.Builder
	conf.WriteString("# written by v3ctl dev at every start\n")
	for _, k := range keys {
		fmt.Fprintf(&conf, "%s = %s\n", k, settings[k])
	}
	confPath := filepath.Join(s.DataDir, "v3ctl.conf")
	if err := os.WriteFile(confPath, []byte(conf.String()), 0o600); err != nil {
		return err
	}
	main := filepath.Join(s.DataDir, "postgresql.conf")
	if !strings.Contains(readFile(main), "include_if_exists = 'v3ctl.conf'") {
		f, err := os.OpenFile(main, os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		_, err = f.WriteString("\ninclude_if_exists = 'v3ctl.conf'\n")
		f.Close()
		if err != nil {
			return err
		}
	}
	if err := su.chown(confPath); err != nil {
		return err
	}
	logPath := filepath.Join(s.Dir, "server.log")
	if su.root {
		f, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err == nil {
			f.Close()
		}
		_ = su.chown(logPath)
	}
	out, err := su.cmd(ctx, filepath.Join(s.BinDir, "pg_ctl"), "start", "-w", "-t", "60",
		"-D", s.DataDir, "-l", logPath).CombinedOutput()
	if err != nil {
		return fmt.Errorf("starting PostgreSQL failed: %w\n%s\nserver log (%s):\n%s", err,
			tail(string(out), 10), logPath, tail(readFile(logPath), 20))
	}
	if err := writeState(s); err != nil {
		return err
	}
	return waitReady(ctx, s)
}

func waitReady(ctx context.Context, s *State) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", s.Port))
		if err == nil {
			conn.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("PostgreSQL did not accept connections on port %d: %w", s.Port, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Down stops the instance (fast shutdown). Stopping a stopped instance is a no-op.
func Down(ctx context.Context, o Options) (*State, bool, error) {
	dir := o.dir()
	unlock, err := lock(dir)
	if err != nil {
		return nil, false, err
	}
	defer unlock()
	return stop(ctx, dir, "fast")
}

func stop(ctx context.Context, dir, mode string) (*State, bool, error) {
	s, err := readState(dir)
	if errors.Is(err, os.ErrNotExist) {
		return &State{Dir: dir}, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	pid := postmasterPID(s.DataDir)
	if pid <= 0 || !processAlive(pid) {
		return s, false, nil
	}
	su, err := currentServerUser()
	if err != nil {
		return nil, false, err
	}
	out, err := su.cmd(ctx, filepath.Join(s.BinDir, "pg_ctl"), "stop", "-w", "-t", "60", "-m", mode, "-D", s.DataDir).CombinedOutput()
	if err != nil {
		return nil, false, fmt.Errorf("stopping PostgreSQL failed: %w\n%s", err, tail(string(out), 10))
	}
	s.Running = false
	return s, true, nil
}

// Restart stops the server immediately (like a crash: mode "immediate") or
// cleanly ("fast"), then starts it again on the same port. Fault tests use it.
func Restart(ctx context.Context, o Options, mode string) (*State, error) {
	dir := o.dir()
	unlock, err := lock(dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	s, _, err := stop(ctx, dir, mode)
	if err != nil {
		return nil, err
	}
	su, err := currentServerUser()
	if err != nil {
		return nil, err
	}
	o.Port = s.Port
	if err := start(ctx, o, s, su); err != nil {
		return nil, err
	}
	s.Running, s.PID = true, postmasterPID(s.DataDir)
	return s, nil
}

// Reset stops the instance and deletes its data directory. The next Up
// starts from an empty cluster.
func Reset(ctx context.Context, o Options) error {
	dir := o.dir()
	unlock, err := lock(dir)
	if err != nil {
		return err
	}
	defer unlock()
	if _, _, err := stop(ctx, dir, "fast"); err != nil {
		return err
	}
	if err := os.RemoveAll(filepath.Join(dir, "data")); err != nil {
		return err
	}
	_ = os.Remove(filepath.Join(dir, "server.log"))
	return os.Remove(statePath(dir))
}
