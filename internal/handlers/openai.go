package handlers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// CapacityRequest names the vendor capacity one call needs.
type CapacityRequest struct {
	Provider        string
	Endpoint        string
	EstimatedTokens int
	JobID           string
	LeaseToken      string
}

// Capacity is the vendor API capacity gate (the SQL functions
// acquire_api_capacity_v2 / release_api_capacity_v2, or a test double).
type Capacity interface {
	// Acquire reserves capacity for one call and returns a hold id; an empty
	// hold means none is free now, and retryAfter, when positive, says when
	// to ask again. A classified error (Permanent, RateLimited) is passed
	// through to the job's outcome.
	Acquire(ctx context.Context, r CapacityRequest) (hold string, retryAfter time.Duration, err error)
	// Release ends the hold, charging the tokens actually used (0 when the
	// call failed before any were counted).
	Release(ctx context.Context, hold string, actualTokens int) error
}

// WaitPolicy is optionally implemented by a Capacity that knows how long a
// refused call may wait (ratelimit.max_wait_seconds) when the handler has no
// capacity_wait of its own.
type WaitPolicy interface {
	MaxWait(ctx context.Context) (time.Duration, bool)
}

// RateLimitReporter is optionally implemented by a Capacity that shares a
// vendor's 429 with every worker (report_api_rate_limited).
type RateLimitReporter interface {
	ReportRateLimited(ctx context.Context, provider, endpoint string, retryAfter time.Duration)
}

const (
	defaultOpenAITimeout   = 5 * time.Minute
	defaultCapacityWait    = 30 * time.Second
	defaultEstimatedTokens = 1000
)

// OpenAI makes one chat-completions call per job. The prompt comes from the
// payload: {"messages": [...]} (OpenAI format) or {"prompt": "...",
// "system": "..."}. The result is {"content", "model", "finish_reason",
// "usage", "response_id"}; the usage is recorded for metering with the
// job's completion.
type OpenAI struct {
	BaseURL         string
	Model           string
	APIKey          string
	Provider        string
	Endpoint        string
	SystemPrompt    string
	MaxTokens       int
	Temperature     float64
	EstimatedTokens int
	Timeout         time.Duration
	CapacityWait    time.Duration
	RateLimitDelay  time.Duration
	Capacity        Capacity
	OnCapacityWait  func(provider, endpoint string)
	Client          *http.Client
	Now             func() time.Time

	mu           sync.Mutex
	blockedUntil time.Time // set by 429s and exhausted x-ratelimit-remaining-*
}

// NewOpenAI builds an openai handler.
func NewOpenAI(s Spec, d Deps) (*OpenAI, error) {
	if s.Model == "" {
		return nil, errors.New("openai handler: model is required (e.g. gpt-4o-mini)")
	}
	base := strings.TrimRight(s.BaseURL, "/")
	if base == "" {
		base = "https://api.openai.com/v1"
	}
	if !strings.HasPrefix(base, "http://") && !strings.HasPrefix(base, "https://") {
		return nil, fmt.Errorf("openai handler: base_url must be an http(s) URL, got %q", redactURL(base))
	}
	o := &OpenAI{BaseURL: base, Model: s.Model, Provider: s.Provider, Endpoint: s.Endpoint,
		SystemPrompt: s.SystemPrompt, MaxTokens: s.MaxTokens, Temperature: s.Temperature,
		EstimatedTokens: s.EstimatedTokens, Timeout: s.Timeout, CapacityWait: s.CapacityWait,
		RateLimitDelay: s.RateLimitDelay, Capacity: d.Capacity, OnCapacityWait: d.OnCapacityWait,
		Client: &http.Client{}, Now: time.Now}
	keyEnv := s.APIKeyEnv
	if keyEnv == "" {
		keyEnv = "OPENAI_API_KEY"
	}
	o.APIKey = getenv(d)(keyEnv)
	if o.APIKey == "" {
		return nil, fmt.Errorf("openai handler: environment variable %s (api_key_env) is empty", keyEnv)
	}
	if o.Provider == "" {
		o.Provider = "openai"
	}
	if o.Endpoint == "" {
		o.Endpoint = o.Model
	}
	if o.EstimatedTokens <= 0 {
		o.EstimatedTokens = defaultEstimatedTokens
	}
	if o.Timeout <= 0 {
		o.Timeout = defaultOpenAITimeout
	}
	if o.RateLimitDelay <= 0 {
		o.RateLimitDelay = defaultRateLimitDelay
	}
	return o, nil
}

type chatMessage struct {
	Role    string `json:"role"`
	Content any    `json:"content"`
}

type chatRequest struct {
	Model       string          `json:"model"`
	Messages    []chatMessage   `json:"messages"`
	MaxTokens   int             `json:"max_tokens,omitempty"`
	Temperature *float64        `json:"temperature,omitempty"`
	Format      json.RawMessage `json:"response_format,omitempty"`
}

type chatResponse struct {
	ID      string `json:"id"`
	Model   string `json:"model"`
	Choices []struct {
		Message struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"message"`
		FinishReason string `json:"finish_reason"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
		TotalTokens      int `json:"total_tokens"`
	} `json:"usage"`
}

// buildRequest reads the prompt from the payload.
func (o *OpenAI) buildRequest(job Job) (chatRequest, int, error) {
	var p struct {
		Messages        []chatMessage   `json:"messages"`
		Prompt          string          `json:"prompt"`
		System          string          `json:"system"`
		EstimatedTokens int             `json:"estimated_tokens"`
		MaxTokens       int             `json:"max_tokens"`
		ResponseFormat  json.RawMessage `json:"response_format"`
	}
	if len(job.Payload) > 0 {
		if err := json.Unmarshal(job.Payload, &p); err != nil {
			return chatRequest{}, 0, fmt.Errorf("payload is not a JSON object: %w", err)
		}
	}
	req := chatRequest{Model: o.Model, MaxTokens: o.MaxTokens, Format: p.ResponseFormat}
	if p.MaxTokens > 0 {
		req.MaxTokens = p.MaxTokens
	}
	if o.Temperature != 0 {
		t := o.Temperature
		req.Temperature = &t
	}
	sys := o.SystemPrompt
	if p.System != "" {
		sys = p.System
	}
	switch {
	case len(p.Messages) > 0:
		if sys != "" && p.Messages[0].Role != "system" {
			req.Messages = append(req.Messages, chatMessage{Role: "system", Content: sys})
		}
		req.Messages = append(req.Messages, p.Messages...)
	case p.Prompt != "":
		if sys != "" {
			req.Messages = append(req.Messages, chatMessage{Role: "system", Content: sys})
		}
		req.Messages = append(req.Messages, chatMessage{Role: "user", Content: p.Prompt})
	default:
		return chatRequest{}, 0, errors.New(`payload has no prompt: give "prompt" (string) or "messages" (OpenAI chat messages)`)
	}
	est := o.EstimatedTokens
	if p.EstimatedTokens > 0 {
		est = p.EstimatedTokens
	}
	return req, est, nil
}

// waitBudget is how long a call may wait for capacity: the handler's
// capacity_wait, else the Capacity's WaitPolicy (the database's
// ratelimit.max_wait_seconds; 0 = hand the job back at once), else 30 s.
func (o *OpenAI) waitBudget(ctx context.Context) time.Duration {
	if o.CapacityWait > 0 {
		return o.CapacityWait
	}
	if p, ok := o.Capacity.(WaitPolicy); ok {
		if d, ok := p.MaxWait(ctx); ok {
			return d
		}
	}
	return defaultCapacityWait
}

// gate waits until the vendor's last rate-limit signal has expired, or
// hands the job back when that is further away than the wait budget.
func (o *OpenAI) gate(ctx context.Context) error {
	o.mu.Lock()
	until := o.blockedUntil
	o.mu.Unlock()
	wait := until.Sub(o.Now())
	if wait <= 0 {
		return nil
	}
	if wait > o.waitBudget(ctx) {
		return RateLimited(wait, fmt.Errorf("%s/%s is rate limited for another %s", o.Provider, o.Endpoint, wait.Round(time.Millisecond)))
	}
	if o.OnCapacityWait != nil {
		o.OnCapacityWait(o.Provider, o.Endpoint)
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

func (o *OpenAI) block(d time.Duration) {
	o.mu.Lock()
	if u := o.Now().Add(d); u.After(o.blockedUntil) {
		o.blockedUntil = u
	}
	o.mu.Unlock()
}

// acquire waits up to the wait budget for vendor capacity.
func (o *OpenAI) acquire(ctx context.Context, cr CapacityRequest) (string, error) {
	if o.Capacity == nil {
		return "", nil
	}
	budget := o.waitBudget(ctx)
	deadline := o.Now().Add(budget)
	backoff := 50 * time.Millisecond
	for {
		hold, ra, err := o.Capacity.Acquire(ctx, cr)
		if err != nil {
			var ce *Error
			if errors.As(err, &ce) {
				return "", err
			}
			return "", Retryable(fmt.Errorf("acquire %s/%s capacity: %w", cr.Provider, cr.Endpoint, err))
		}
		if hold != "" {
			return hold, nil
		}
		wait := backoff
		if ra > 0 {
			wait = ra
		}
		if o.Now().Add(wait).After(deadline) {
			if wait < time.Second {
				wait = time.Second
			}
			return "", RateLimited(wait, fmt.Errorf("no %s/%s capacity within %s", cr.Provider, cr.Endpoint, budget))
		}
		if o.OnCapacityWait != nil {
			o.OnCapacityWait(cr.Provider, cr.Endpoint)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return "", context.Cause(ctx)
		case <-t.C:
		}
		backoff = min(backoff*2, time.Second)
	}
}

// Handle makes the call.
func (o *OpenAI) Handle(ctx context.Context, job Job) (Result, error) {
	req, est, err := o.buildRequest(job)
	if err != nil {
		return Result{}, Permanent(err)
	}
	if err := o.gate(ctx); err != nil {
		return Result{}, err
	}
	cr := CapacityRequest{Provider: o.Provider, Endpoint: o.Endpoint, EstimatedTokens: est, JobID: job.ID, LeaseToken: job.LeaseToken}
	hold, err := o.acquire(ctx, cr)
	if err != nil {
		return Result{}, err
	}
	used := 0
	if hold != "" {
		defer func() {
			// Release even when the job's context is gone.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			_ = o.Capacity.Release(rctx, hold, used)
		}()
	}
	body, _ := json.Marshal(req)
	cctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	hr, err := http.NewRequestWithContext(cctx, http.MethodPost, o.BaseURL+"/chat/completions", bytes.NewReader(body))
	if err != nil {
		return Result{}, Permanent(err)
	}
	hr.Header.Set("Content-Type", "application/json")
	hr.Header.Set("Authorization", "Bearer "+o.APIKey)
	if job.ID != "" {
		hr.Header.Set("X-Client-Request-Id", job.ID)
	}
	resp, err := o.Client.Do(hr)
	if err != nil {
		return Result{}, Retryable(fmt.Errorf("%s chat completion: %w", o.Provider, stripURLErr(err)))
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return Result{}, Retryable(fmt.Errorf("%s chat completion: reading response: %w", o.Provider, err))
	}
	o.observe(resp)
	st := resp.StatusCode
	switch {
	case st == http.StatusOK:
	case st == http.StatusTooManyRequests:
		if isQuotaError(rb) {
			return Result{}, Retryable(fmt.Errorf("%s: 429 insufficient quota (check the account's billing)", o.Provider))
		}
		d := o.rateLimitDelay(resp)
		o.block(d)
		if rr, ok := o.Capacity.(RateLimitReporter); ok {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			rr.ReportRateLimited(rctx, o.Provider, o.Endpoint, d)
			cancel()
		}
		return Result{}, RateLimited(d, fmt.Errorf("%s/%s: 429 rate limited (retry after %s)", o.Provider, o.Endpoint, d))
	case st == http.StatusServiceUnavailable:
		if d, ok := RetryAfter(resp.Header, o.Now()); ok {
			o.block(d)
			return Result{}, RateLimited(d, fmt.Errorf("%s: 503 overloaded (retry after %s)", o.Provider, d))
		}
		return Result{}, Retryable(fmt.Errorf("%s: %s", o.Provider, resp.Status))
	case st >= 500 || st == http.StatusRequestTimeout || st == http.StatusConflict:
		return Result{}, Retryable(fmt.Errorf("%s: %s", o.Provider, resp.Status))
	default:
		return Result{}, Permanent(fmt.Errorf("%s: %s%s", o.Provider, resp.Status, errorSnippet(rb)))
	}
	var cr2 chatResponse
	if err := json.Unmarshal(rb, &cr2); err != nil {
		return Result{}, Retryable(fmt.Errorf("%s: response is not chat-completions JSON: %w", o.Provider, err))
	}
	if len(cr2.Choices) == 0 {
		return Result{}, Retryable(fmt.Errorf("%s: response has no choices", o.Provider))
	}
	u := &Usage{Provider: o.Provider, Endpoint: o.Endpoint}
	if cr2.Usage != nil {
		u.PromptTokens, u.CompletionTokens, u.TotalTokens = cr2.Usage.PromptTokens, cr2.Usage.CompletionTokens, cr2.Usage.TotalTokens
		if u.TotalTokens == 0 {
			u.TotalTokens = u.PromptTokens + u.CompletionTokens
		}
	}
	used = u.TotalTokens
	out, err := json.Marshal(map[string]any{
		"content":       cr2.Choices[0].Message.Content,
		"finish_reason": cr2.Choices[0].FinishReason,
		"model":         cr2.Model,
		"response_id":   cr2.ID,
		"usage": map[string]int{
			"prompt_tokens":     u.PromptTokens,
			"completion_tokens": u.CompletionTokens,
			"total_tokens":      u.TotalTokens,
		},
	})
	if err != nil {
		return Result{}, Permanent(err)
	}
	return Result{Output: out, Usage: u}, nil
}

// observe honours x-ratelimit-remaining-*: when a budget is spent, later
// calls wait for its reset.
func (o *OpenAI) observe(resp *http.Response) {
	if resp.StatusCode == http.StatusTooManyRequests {
		return
	}
	for _, kind := range []string{"requests", "tokens"} {
		rem := strings.TrimSpace(resp.Header.Get("x-ratelimit-remaining-" + kind))
		if rem == "" {
			continue
		}
		if n, err := strconv.ParseFloat(rem, 64); err == nil && n <= 0 {
			if d, ok := ParseResetDuration(resp.Header.Get("x-ratelimit-reset-" + kind)); ok {
				o.block(d)
			}
		}
	}
}

// rateLimitDelay picks the delay for a 429: retry-after, else the reset of
// the exhausted x-ratelimit budget (the longest when unsure), else the
// configured default.
// A 429 always pauses at least minRateLimitDelay: "Retry-After: 0" or a
// reset already past would otherwise send every worker straight back.
const minRateLimitDelay = time.Second

func (o *OpenAI) rateLimitDelay(resp *http.Response) time.Duration {
	return max(o.rateLimitDelayRaw(resp), minRateLimitDelay)
}

func (o *OpenAI) rateLimitDelayRaw(resp *http.Response) time.Duration {
	if d, ok := RetryAfter(resp.Header, o.Now()); ok {
		return d
	}
	var best time.Duration
	found, exhausted := false, false
	for _, kind := range []string{"requests", "tokens"} {
		d, ok := ParseResetDuration(resp.Header.Get("x-ratelimit-reset-" + kind))
		if !ok {
			continue
		}
		rem := strings.TrimSpace(resp.Header.Get("x-ratelimit-remaining-" + kind))
		n, err := strconv.ParseFloat(rem, 64)
		isEx := err == nil && n <= 0
		switch {
		case isEx && !exhausted:
			best, exhausted, found = d, true, true
		case isEx == exhausted && d > best:
			best, found = d, true
		}
	}
	if found {
		return best
	}
	return o.RateLimitDelay
}

// ParseResetDuration reads OpenAI's x-ratelimit-reset-* values ("1s",
// "6m0s", "20ms", "1h2m3.5s") or plain seconds.
func ParseResetDuration(v string) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if d, err := time.ParseDuration(v); err == nil && d >= 0 {
		return d, true
	}
	if f, err := strconv.ParseFloat(v, 64); err == nil && f >= 0 {
		return time.Duration(f * float64(time.Second)), true
	}
	return 0, false
}

func isQuotaError(b []byte) bool {
	var v struct {
		Error struct {
			Code string `json:"code"`
			Type string `json:"type"`
		} `json:"error"`
	}
	return json.Unmarshal(b, &v) == nil && (v.Error.Code == "insufficient_quota" || v.Error.Type == "insufficient_quota")
}
