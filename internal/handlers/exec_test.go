package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func script(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "h.sh")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func testJob() Job {
	return Job{ID: "11111111-1111-1111-1111-111111111111", Type: "shell_file_processing", Attempt: 2,
		MaxRetries: 3, CorrelationID: "corr-1", Payload: json.RawMessage(`{"shell_file_id":"abc","n":7}`)}
}

func TestExecSuccessStdinEnvStdout(t *testing.T) {
	// The script echoes what it got: env and the payload read from stdin.
	s := script(t, `in=$(cat)
printf '{"id":"%s","type":"%s","attempt":%s,"corr":"%s","stdin":%s}' "$JOB_ID" "$JOB_TYPE" "$JOB_ATTEMPT" "$CORRELATION_ID" "$in"`)
	h, err := NewExec(Spec{Kind: "exec", Command: []string{s}, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	res, err := h.Handle(context.Background(), testJob())
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		ID, Type, Corr string
		Attempt        int
		Stdin          Job
	}
	if err := json.Unmarshal(res.Output, &got); err != nil {
		t.Fatalf("output %s: %v", res.Output, err)
	}
	j := testJob()
	if got.ID != j.ID || got.Type != j.Type || got.Attempt != 2 || got.Corr != "corr-1" {
		t.Fatalf("env not passed: %+v", got)
	}
	if got.Stdin.ID != j.ID || string(got.Stdin.Payload) != string(j.Payload) {
		t.Fatalf("stdin job: %+v payload %s", got.Stdin, got.Stdin.Payload)
	}
}

func TestExecOutcomes(t *testing.T) {
	cases := []struct {
		name, body string
		kind       Kind
		wantMsg    string
		retryAfter time.Duration
	}{
		{"retry", `echo "temporary glitch" >&2; exit 75`, KindRetryable, "temporary glitch", 0},
		{"rate-limited", `echo '{"retry_after_seconds": 2.5}'; exit 75`, KindRateLimited, "retry after", 2500 * time.Millisecond},
		{"permanent", `echo "bad input" >&2; exit 3`, KindPermanent, "exit status 3; stderr: bad input", 0},
		{"not-json", `echo "plain words"`, KindPermanent, "not valid JSON", 0},
		{"killed", `kill -9 $$`, KindRetryable, "killed", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, err := NewExec(Spec{Command: []string{script(t, c.body)}})
			if err != nil {
				t.Fatal(err)
			}
			_, err = h.Handle(context.Background(), testJob())
			if err == nil {
				t.Fatal("want an error")
			}
			k, d := Classify(err)
			if k != c.kind || d != c.retryAfter || !strings.Contains(err.Error(), c.wantMsg) {
				t.Fatalf("got kind %v after %v err %q; want %v %v containing %q", k, d, err, c.kind, c.retryAfter, c.wantMsg)
			}
		})
	}
}

func TestExecEmptyStdoutIsNullResult(t *testing.T) {
	h, _ := NewExec(Spec{Command: []string{script(t, `cat >/dev/null`)}})
	res, err := h.Handle(context.Background(), testJob())
	if err != nil || res.Output != nil {
		t.Fatalf("res %s err %v", res.Output, err)
	}
}

func TestExecStderrTruncated(t *testing.T) {
	h, _ := NewExec(Spec{Command: []string{script(t, `i=0; while [ $i -lt 2000 ]; do echo "line $i of noise" >&2; i=$((i+1)); done; echo LAST >&2; exit 1`)}})
	_, err := h.Handle(context.Background(), testJob())
	if err == nil || len(err.Error()) > stderrKeep+200 || !strings.HasSuffix(err.Error(), "LAST") {
		t.Fatalf("stderr not truncated to its tail: %d bytes, %q", len(err.Error()), truncate(err.Error(), 80))
	}
}

func TestExecTimeoutKillsProcessGroup(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "child-survived")
	// The child sleeps, then would write a marker: it must be killed with its parent.
	s := script(t, `(sleep 2; touch `+marker+`) &
sleep 30`)
	h, _ := NewExec(Spec{Command: []string{s}, Timeout: 300 * time.Millisecond})
	_, err := h.Handle(context.Background(), testJob())
	if k, _ := Classify(err); err == nil || k != KindRetryable || !strings.Contains(err.Error(), "timed out") {
		t.Fatalf("err %v kind %v", err, k)
	}
	time.Sleep(2500 * time.Millisecond)
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("a child of the timed-out command survived")
	}
}

func TestExecCancelSendsSIGTERM(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "got-term")
	s := script(t, `trap 'touch `+marker+`; exit 1' TERM
sleep 30 &
wait`)
	h, _ := NewExec(Spec{Command: []string{s}})
	ctx, cancel := context.WithCancelCause(context.Background())
	go func() { time.Sleep(300 * time.Millisecond); cancel(errors.New("lease lost")) }()
	_, err := h.Handle(ctx, testJob())
	if err == nil || !strings.Contains(err.Error(), "lease lost") {
		t.Fatalf("err %v", err)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatal("the command did not get SIGTERM on cancellation")
	}
}

func TestExecMissingCommandIsPermanent(t *testing.T) {
	h, _ := NewExec(Spec{Command: []string{"/nonexistent/handler"}})
	_, err := h.Handle(context.Background(), testJob())
	if k, _ := Classify(err); k != KindPermanent {
		t.Fatalf("err %v kind %v", err, k)
	}
	if _, err := NewExec(Spec{}); err == nil {
		t.Fatal("empty command accepted")
	}
}

func TestExecReportsUsage(t *testing.T) {
	for _, c := range []struct {
		out  string
		want *Usage
	}{
		{`{"summary":"x","usage":{"prompt_tokens":120,"completion_tokens":30,"total_tokens":150}}`, &Usage{PromptTokens: 120, CompletionTokens: 30, TotalTokens: 150}},
		{`{"usage":{"prompt_tokens":5,"completion_tokens":2}}`, &Usage{PromptTokens: 5, CompletionTokens: 2, TotalTokens: 7}},
		{`{"usage":{"total_tokens":0}}`, nil},
		{`{"usage":"lots"}`, nil},
		{`[1,2]`, nil},
		{`{"pages":2}`, nil},
	} {
		h, _ := NewExec(Spec{Command: []string{script(t, "cat >/dev/null; echo '"+c.out+"'")}})
		res, err := h.Handle(context.Background(), testJob())
		if err != nil {
			t.Fatalf("%s: %v", c.out, err)
		}
		if (res.Usage == nil) != (c.want == nil) || (c.want != nil && *res.Usage != *c.want) {
			t.Errorf("%s: usage %+v, want %+v", c.out, res.Usage, c.want)
		}
		if string(res.Output) != c.out {
			t.Errorf("output %s, want %s", res.Output, c.out)
		}
	}
}
