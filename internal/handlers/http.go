package handlers

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Signature headers sent by the http handler. The signature is
// HMAC-SHA256(secret, "<timestamp>.<body>") in hex, so a receiver can
// check both the body and its freshness (reject old timestamps).
const (
	HeaderSignature = "X-V3-Signature"
	HeaderTimestamp = "X-V3-Timestamp"
	HeaderJobID     = "X-V3-Job-Id"
	HeaderAttempt   = "X-V3-Attempt"
	HeaderCorrID    = "X-Correlation-Id"
)

const (
	defaultHTTPTimeout    = 60 * time.Second
	defaultRateLimitDelay = 30 * time.Second
	maxResponse           = 16 << 20
)

// HTTP POSTs each job (the same JSON an exec handler gets on stdin) to URL.
// 2xx is success (a JSON body becomes the result); 429, or 503 with
// Retry-After, is a rate limit (rescheduled, no attempt used); 408 and other
// 5xx are retried; other 4xx are permanent.
type HTTP struct {
	URL            string
	Secret         []byte
	BearerToken    string
	Headers        map[string]string
	Timeout        time.Duration
	RateLimitDelay time.Duration
	Client         *http.Client
	Now            func() time.Time
}

// NewHTTP builds an http handler; secrets are read from the environment
// variables the spec names.
func NewHTTP(s Spec, d Deps) (*HTTP, error) {
	if s.URL == "" {
		return nil, errors.New("http handler: url is required")
	}
	u, err := url.Parse(s.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("http handler: url must be an http(s) URL, got %q", redactURL(s.URL))
	}
	env := getenv(d)
	h := &HTTP{URL: s.URL, Headers: s.Headers, Timeout: s.Timeout, RateLimitDelay: s.RateLimitDelay,
		Client: &http.Client{}, Now: time.Now}
	if s.SecretEnv != "" {
		v := env(s.SecretEnv)
		if v == "" {
			return nil, fmt.Errorf("http handler: environment variable %s (secret_env) is empty", s.SecretEnv)
		}
		h.Secret = []byte(v)
	}
	if s.BearerTokenEnv != "" {
		v := env(s.BearerTokenEnv)
		if v == "" {
			return nil, fmt.Errorf("http handler: environment variable %s (bearer_token_env) is empty", s.BearerTokenEnv)
		}
		h.BearerToken = v
	}
	if h.Timeout <= 0 {
		h.Timeout = defaultHTTPTimeout
	}
	if h.RateLimitDelay <= 0 {
		h.RateLimitDelay = defaultRateLimitDelay
	}
	return h, nil
}

// Sign computes the signature header value for a body and timestamp.
func Sign(secret []byte, timestamp string, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(timestamp))
	m.Write([]byte("."))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Verify checks a signature header value (for receivers and tests).
func Verify(secret []byte, timestamp string, body []byte, header string) bool {
	return hmac.Equal([]byte(Sign(secret, timestamp, body)), []byte(header))
}

// Handle sends one request.
func (h *HTTP) Handle(ctx context.Context, job Job) (Result, error) {
	body, err := envelope(job)
	if err != nil {
		return Result{}, Permanent(fmt.Errorf("encode job: %w", err))
	}
	ctx, cancel := context.WithTimeout(ctx, h.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.URL, bytes.NewReader(body))
	if err != nil {
		return Result{}, Permanent(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "v3ctl-worker")
	for k, v := range h.Headers {
		req.Header.Set(k, v)
	}
	ts := strconv.FormatInt(h.Now().Unix(), 10)
	req.Header.Set(HeaderTimestamp, ts)
	if len(h.Secret) > 0 {
		req.Header.Set(HeaderSignature, Sign(h.Secret, ts, body))
	}
	if h.BearerToken != "" {
		req.Header.Set("Authorization", "Bearer "+h.BearerToken)
	}
	req.Header.Set(HeaderJobID, job.ID)
	req.Header.Set("Idempotency-Key", job.ID)
	req.Header.Set(HeaderAttempt, strconv.Itoa(job.Attempt))
	if job.CorrelationID != "" {
		req.Header.Set(HeaderCorrID, job.CorrelationID)
	}
	resp, err := h.Client.Do(req)
	if err != nil {
		return Result{}, Retryable(fmt.Errorf("POST %s: %w", redactURL(h.URL), stripURLErr(err)))
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return Result{}, Retryable(fmt.Errorf("POST %s: reading response: %w", redactURL(h.URL), err))
	}
	st := resp.StatusCode
	switch {
	case st >= 200 && st < 300:
		if len(rb) > maxResponse {
			return Result{}, Permanent(fmt.Errorf("POST %s: response larger than %d bytes", redactURL(h.URL), maxResponse))
		}
		rb = bytes.TrimSpace(rb)
		if len(rb) == 0 {
			return Result{}, nil
		}
		if !json.Valid(rb) {
			out, _ := json.Marshal(map[string]any{"http_status": st})
			return Result{Output: out}, nil
		}
		return Result{Output: rb}, nil
	case st == http.StatusTooManyRequests:
		d, ok := RetryAfter(resp.Header, h.Now())
		if !ok {
			d = h.RateLimitDelay
		}
		return Result{}, RateLimited(d, fmt.Errorf("POST %s: 429 Too Many Requests (retry after %s)", redactURL(h.URL), d))
	case st == http.StatusServiceUnavailable:
		if d, ok := RetryAfter(resp.Header, h.Now()); ok {
			return Result{}, RateLimited(d, fmt.Errorf("POST %s: 503 Service Unavailable (retry after %s)", redactURL(h.URL), d))
		}
		return Result{}, Retryable(fmt.Errorf("POST %s: 503 Service Unavailable", redactURL(h.URL)))
	case st >= 500 || st == http.StatusRequestTimeout:
		return Result{}, Retryable(fmt.Errorf("POST %s: %s", redactURL(h.URL), resp.Status))
	default:
		return Result{}, Permanent(fmt.Errorf("POST %s: %s%s", redactURL(h.URL), resp.Status, errorSnippet(rb)))
	}
}

// errorSnippet keeps a short error message from a JSON error body
// ({"error": "..."} or {"error": {"message": "..."}}); other bodies are not
// kept, since they may echo the payload.
func errorSnippet(b []byte) string {
	var v struct {
		Error   json.RawMessage `json:"error"`
		Message string          `json:"message"`
	}
	if json.Unmarshal(b, &v) != nil {
		return ""
	}
	msg := v.Message
	if len(v.Error) > 0 {
		var s string
		var o struct {
			Message string `json:"message"`
			Code    any    `json:"code"`
		}
		if json.Unmarshal(v.Error, &s) == nil {
			msg = s
		} else if json.Unmarshal(v.Error, &o) == nil && o.Message != "" {
			msg = o.Message
		}
	}
	if msg == "" {
		return ""
	}
	return ": " + truncate(msg, 300)
}

// RetryAfter reads Retry-After (seconds, fractional seconds, or an HTTP
// date) and retry-after-ms.
func RetryAfter(h http.Header, now time.Time) (time.Duration, bool) {
	if v := strings.TrimSpace(h.Get("retry-after-ms")); v != "" {
		if f, err := strconv.ParseFloat(v, 64); err == nil && f >= 0 {
			return time.Duration(f * float64(time.Millisecond)), true
		}
	}
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0, false
	}
	if f, err := strconv.ParseFloat(v, 64); err == nil && f >= 0 {
		return time.Duration(f * float64(time.Second)), true
	}
	if t, err := http.ParseTime(v); err == nil {
		d := t.Sub(now)
		if d < 0 {
			d = 0
		}
		return d, true
	}
	return 0, false
}

// redactURL drops query and user info, which may carry keys.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(invalid URL)"
	}
	u.User = nil
	u.RawQuery = ""
	u.Fragment = ""
	return u.String()
}

func stripURLErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
