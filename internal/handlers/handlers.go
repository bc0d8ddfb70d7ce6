// Package handlers holds the job handlers a v3ctl worker runs: the built-in
// kinds exec (a subprocess), http (a signed POST to a service or Edge
// Function) and openai (one OpenAI-compatible chat-completions call), built
// from the worker's configuration. Handlers know nothing about the queue:
// they take a Job, return a Result or a classified error, and the worker
// turns that into complete / fail / reschedule calls.
//
// Handlers never log payloads, results or extracted text.
package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
	"unicode/utf8"
)

// Job is what a handler sees of a claimed job.
type Job struct {
	ID            string          `json:"id"`
	Type          string          `json:"job_type"`
	Lane          string          `json:"job_lane,omitempty"`
	Name          string          `json:"job_name,omitempty"`
	Attempt       int             `json:"attempt"`
	MaxRetries    int             `json:"max_retries"`
	CorrelationID string          `json:"correlation_id,omitempty"`
	PatientID     string          `json:"patient_id,omitempty"`
	ShellFileID   string          `json:"shell_file_id,omitempty"`
	Payload       json.RawMessage `json:"payload"`
	// LeaseToken fences capacity holds to this claim; never sent or logged.
	LeaseToken string `json:"-"`
}

// Result is a successful outcome.
type Result struct {
	// Output is stored as the job's result (nil stores SQL NULL). It must be
	// valid JSON.
	Output json.RawMessage
	// Usage, when set, is recorded for metering in the same transaction
	// that completes the job (track_ai_processing_usage).
	Usage *Usage
}

// Usage is metered AI consumption of one job.
type Usage struct {
	Provider         string
	Endpoint         string
	PromptTokens     int
	CompletionTokens int
	TotalTokens      int
}

// Handler runs one job. ctx is cancelled when the job's time is up, when
// its lease is lost or when the worker stops; a handler must return soon
// after.
type Handler interface {
	Handle(ctx context.Context, job Job) (Result, error)
}

// Func adapts a function to Handler.
type Func func(ctx context.Context, job Job) (Result, error)

// Handle calls f.
func (f Func) Handle(ctx context.Context, job Job) (Result, error) { return f(ctx, job) }

// Kind classifies a failure.
type Kind int

const (
	// KindRetryable: try again later; consumes an attempt.
	KindRetryable Kind = iota
	// KindPermanent: retrying cannot help; the job goes to the dead letter.
	KindPermanent
	// KindRateLimited: the vendor asked us to come back later; the job is
	// rescheduled after RetryAfter without consuming an attempt.
	KindRateLimited
)

func (k Kind) String() string {
	switch k {
	case KindPermanent:
		return "permanent"
	case KindRateLimited:
		return "rate_limited"
	}
	return "retryable"
}

// Error is a classified handler failure.
type Error struct {
	Kind       Kind
	RetryAfter time.Duration
	Err        error
}

func (e *Error) Error() string {
	if e.Err == nil {
		return e.Kind.String()
	}
	return e.Err.Error()
}
func (e *Error) Unwrap() error { return e.Err }

// Retryable marks err as worth retrying (this is also the default for
// unclassified errors).
func Retryable(err error) error { return &Error{Kind: KindRetryable, Err: err} }

// Permanent marks err as final: the job is not retried.
func Permanent(err error) error { return &Error{Kind: KindPermanent, Err: err} }

// RateLimited asks for the job to be rescheduled after d without consuming
// an attempt.
func RateLimited(d time.Duration, err error) error {
	return &Error{Kind: KindRateLimited, RetryAfter: d, Err: err}
}

// Classify returns the kind of err and, for rate limits, the delay asked
// for. Unclassified errors are retryable.
func Classify(err error) (Kind, time.Duration) {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind, e.RetryAfter
	}
	return KindRetryable, 0
}

// Spec is one handler's configuration (worker.handlers.<job_type>).
type Spec struct {
	Kind    string        `mapstructure:"kind" json:"kind" yaml:"kind"`
	Timeout time.Duration `mapstructure:"timeout" json:"timeout,omitempty" yaml:"timeout,omitempty"`

	// exec
	Command []string          `mapstructure:"command" json:"command,omitempty" yaml:"command,omitempty"`
	Dir     string            `mapstructure:"dir" json:"dir,omitempty" yaml:"dir,omitempty"`
	Env     map[string]string `mapstructure:"env" json:"env,omitempty" yaml:"env,omitempty"`

	// http
	URL            string            `mapstructure:"url" json:"url,omitempty" yaml:"url,omitempty"`
	SecretEnv      string            `mapstructure:"secret_env" json:"secret_env,omitempty" yaml:"secret_env,omitempty"`
	BearerTokenEnv string            `mapstructure:"bearer_token_env" json:"bearer_token_env,omitempty" yaml:"bearer_token_env,omitempty"`
	Headers        map[string]string `mapstructure:"headers" json:"headers,omitempty" yaml:"headers,omitempty"`

	// openai
	BaseURL         string  `mapstructure:"base_url" json:"base_url,omitempty" yaml:"base_url,omitempty"`
	Model           string  `mapstructure:"model" json:"model,omitempty" yaml:"model,omitempty"`
	APIKeyEnv       string  `mapstructure:"api_key_env" json:"api_key_env,omitempty" yaml:"api_key_env,omitempty"`
	Provider        string  `mapstructure:"provider" json:"provider,omitempty" yaml:"provider,omitempty"`
	Endpoint        string  `mapstructure:"endpoint" json:"endpoint,omitempty" yaml:"endpoint,omitempty"`
	SystemPrompt    string  `mapstructure:"system_prompt" json:"system_prompt,omitempty" yaml:"system_prompt,omitempty"`
	MaxTokens       int     `mapstructure:"max_tokens" json:"max_tokens,omitempty" yaml:"max_tokens,omitempty"`
	Temperature     float64 `mapstructure:"temperature" json:"temperature,omitempty" yaml:"temperature,omitempty"`
	EstimatedTokens int     `mapstructure:"estimated_tokens" json:"estimated_tokens,omitempty" yaml:"estimated_tokens,omitempty"`
	// CapacityWait is how long the handler waits in-process for vendor
	// capacity before handing the job back (rescheduled, no attempt used).
	// Unset: the database's ratelimit.max_wait_seconds (30 s without one).
	CapacityWait time.Duration `mapstructure:"capacity_wait" json:"capacity_wait,omitempty" yaml:"capacity_wait,omitempty"`

	// RateLimitDelay is used when a 429 carries no retry-after (http, openai).
	RateLimitDelay time.Duration `mapstructure:"rate_limit_delay" json:"rate_limit_delay,omitempty" yaml:"rate_limit_delay,omitempty"`
}

// Kinds are the built-in handler kinds.
var Kinds = []string{"exec", "http", "openai"}

// Deps are what some kinds need from the worker.
type Deps struct {
	// Capacity is the vendor capacity gate for openai handlers (nil: none).
	Capacity Capacity
	// Getenv reads secrets (default os.Getenv).
	Getenv func(string) string
	// OnCapacityWait is called each time a handler waits for capacity.
	OnCapacityWait func(provider, endpoint string)
}

// Build makes the handler for one job type from its spec.
func Build(jobType string, s Spec, d Deps) (Handler, error) {
	switch strings.ToLower(s.Kind) {
	case "exec":
		return NewExec(s)
	case "http":
		return NewHTTP(s, d)
	case "openai":
		return NewOpenAI(s, d)
	case "":
		return nil, fmt.Errorf("handler for %s: kind is required (one of %s)", jobType, strings.Join(Kinds, ", "))
	}
	return nil, fmt.Errorf("handler for %s: unknown kind %q (valid kinds: %s)", jobType, s.Kind, strings.Join(Kinds, ", "))
}

// BuildAll builds every configured handler; errors name the job type.
func BuildAll(specs map[string]Spec, d Deps) (map[string]Handler, error) {
	out := make(map[string]Handler, len(specs))
	names := make([]string, 0, len(specs))
	for k := range specs {
		names = append(names, k)
	}
	sort.Strings(names)
	var errs []error
	for _, jt := range names {
		h, err := Build(jt, specs[jt], d)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out[jt] = h
	}
	return out, errors.Join(errs...)
}

// envelope is the JSON a job is sent as (exec stdin, http body).
func envelope(job Job) ([]byte, error) {
	if len(job.Payload) == 0 {
		job.Payload = json.RawMessage("null")
	}
	return json.Marshal(job)
}

// truncate keeps at most n bytes of s (the tail, where errors usually are).
func truncate(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) <= n {
		return s
	}
	i := len(s) - n
	for i < len(s) && !utf8.RuneStart(s[i]) { // keep whole characters
		i++
	}
	return "…" + s[i:]
}

func getenv(d Deps) func(string) string {
	if d.Getenv != nil {
		return d.Getenv
	}
	return osGetenv
}
