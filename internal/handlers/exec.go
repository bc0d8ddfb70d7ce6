package handlers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"
)

var osGetenv = os.Getenv

// ExitRetry is the exit status an exec handler uses to ask for a retry
// (EX_TEMPFAIL from sysexits.h).
const ExitRetry = 75

const (
	maxStdout    = 16 << 20 // a result larger than this is refused
	stderrKeep   = 2048     // bytes of stderr kept in the error
	defaultExecT = 10 * time.Minute
	killGrace    = 5 * time.Second // SIGTERM, then SIGKILL after this
)

// Exec runs a command per job: the job as JSON on stdin, JOB_ID, JOB_TYPE,
// JOB_ATTEMPT and CORRELATION_ID in the environment, JSON on stdout as the
// result. Exit 0 is success, 75 asks for a retry (with
// {"retry_after_seconds": N} on stdout it is a rate limit: rescheduled
// without consuming an attempt), anything else is permanent. On timeout or
// cancellation the whole process group gets SIGTERM, then SIGKILL.
//
// A result object with an OpenAI-style "usage" member ({"prompt_tokens",
// "completion_tokens", "total_tokens"}) reports AI consumption: the worker
// meters it (track_ai_processing_usage) when it completes the job.
type Exec struct {
	Command []string
	Dir     string
	Env     map[string]string
	Timeout time.Duration
}

// NewExec builds an exec handler.
func NewExec(s Spec) (*Exec, error) {
	if len(s.Command) == 0 || s.Command[0] == "" {
		return nil, errors.New("exec handler: command is required, e.g. command: [\"./bin/extract-text\"]")
	}
	t := s.Timeout
	if t <= 0 {
		t = defaultExecT
	}
	return &Exec{Command: s.Command, Dir: s.Dir, Env: s.Env, Timeout: t}, nil
}

type limitedBuffer struct {
	buf   bytes.Buffer
	limit int
	over  bool
	tail  bool // keep the tail instead of the head
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if l.tail {
		l.buf.Write(p)
		if l.buf.Len() > 2*l.limit {
			b := l.buf.Bytes()[l.buf.Len()-l.limit:]
			nb := append([]byte(nil), b...)
			l.buf.Reset()
			l.buf.Write(nb)
		}
		return n, nil
	}
	if l.buf.Len()+len(p) > l.limit {
		l.over = true
		p = p[:max(0, l.limit-l.buf.Len())]
	}
	l.buf.Write(p)
	return n, nil
}

// Handle runs the command once.
func (e *Exec) Handle(ctx context.Context, job Job) (Result, error) {
	in, err := envelope(job)
	if err != nil {
		return Result{}, Permanent(fmt.Errorf("encode job: %w", err))
	}
	ctx, cancel := context.WithTimeoutCause(ctx, e.Timeout, errExecTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.Command[0], e.Command[1:]...)
	cmd.Dir = e.Dir
	cmd.Env = append(os.Environ(),
		"JOB_ID="+job.ID,
		"JOB_TYPE="+job.Type,
		"JOB_ATTEMPT="+strconv.Itoa(job.Attempt),
		"CORRELATION_ID="+job.CorrelationID,
	)
	for k, v := range e.Env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdin = bytes.NewReader(in)
	stdout := &limitedBuffer{limit: maxStdout}
	stderr := &limitedBuffer{limit: stderrKeep, tail: true}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	setProcAttrs(cmd)
	cmd.Cancel = func() error { return signalGroup(cmd, syscall.SIGTERM) }
	cmd.WaitDelay = killGrace
	start := time.Now()
	runErr := cmd.Run()
	// Whatever happened, make sure nothing of the group survives.
	if cmd.Process != nil {
		_ = signalGroup(cmd, syscall.SIGKILL)
	}
	if ctx.Err() != nil {
		cause := context.Cause(ctx)
		if errors.Is(cause, errExecTimeout) {
			return Result{}, Retryable(fmt.Errorf("%s: timed out after %s%s", e.Command[0], e.Timeout, stderrSuffix(stderr)))
		}
		return Result{}, Retryable(fmt.Errorf("%s: cancelled after %s: %w", e.Command[0], time.Since(start).Round(time.Millisecond), cause))
	}
	var ee *exec.ExitError
	if runErr != nil && !errors.As(runErr, &ee) {
		// Could not start (missing file, permission): the configuration is wrong.
		return Result{}, Permanent(fmt.Errorf("run %s: %w", e.Command[0], runErr))
	}
	if ee != nil {
		code := ee.ExitCode()
		if code == -1 { // killed by a signal we did not send
			return Result{}, Retryable(fmt.Errorf("%s: %s%s", e.Command[0], ee.String(), stderrSuffix(stderr)))
		}
		if code == ExitRetry {
			var hint struct {
				RetryAfterSeconds *float64 `json:"retry_after_seconds"`
			}
			if json.Unmarshal(stdout.buf.Bytes(), &hint) == nil && hint.RetryAfterSeconds != nil {
				d := time.Duration(*hint.RetryAfterSeconds * float64(time.Second))
				return Result{}, RateLimited(d, fmt.Errorf("%s asked to retry after %s%s", e.Command[0], d, stderrSuffix(stderr)))
			}
			return Result{}, Retryable(fmt.Errorf("%s: exit status %d (retry)%s", e.Command[0], code, stderrSuffix(stderr)))
		}
		return Result{}, Permanent(fmt.Errorf("%s: exit status %d%s", e.Command[0], code, stderrSuffix(stderr)))
	}
	if stdout.over {
		return Result{}, Permanent(fmt.Errorf("%s: stdout is larger than %d bytes", e.Command[0], maxStdout))
	}
	out := bytes.TrimSpace(stdout.buf.Bytes())
	if len(out) == 0 {
		return Result{}, nil
	}
	if !json.Valid(out) {
		return Result{}, Permanent(fmt.Errorf("%s: stdout is not valid JSON (%d bytes); print the result as one JSON value", e.Command[0], len(out)))
	}
	return Result{Output: json.RawMessage(out), Usage: execUsage(out)}, nil
}

// execUsage reads the optional "usage" member of an exec result.
func execUsage(out []byte) *Usage {
	var r struct {
		Usage *struct {
			PromptTokens     int `json:"prompt_tokens"`
			CompletionTokens int `json:"completion_tokens"`
			TotalTokens      int `json:"total_tokens"`
		} `json:"usage"`
	}
	if json.Unmarshal(out, &r) != nil || r.Usage == nil {
		return nil
	}
	u := &Usage{PromptTokens: max(r.Usage.PromptTokens, 0), CompletionTokens: max(r.Usage.CompletionTokens, 0),
		TotalTokens: r.Usage.TotalTokens}
	if u.TotalTokens <= 0 {
		u.TotalTokens = u.PromptTokens + u.CompletionTokens
	}
	if u.TotalTokens <= 0 {
		return nil
	}
	return u
}

var errExecTimeout = errors.New("handler timeout")

func stderrSuffix(l *limitedBuffer) string {
	s := truncate(l.buf.String(), stderrKeep)
	if s == "" {
		return ""
	}
	return "; stderr: " + s
}
