package ratelimit

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// RetryAfterFromHeaders reads how long a vendor asked us to back off after a
// 429. In order of authority:
//   - retry-after-ms (OpenAI, Azure OpenAI): milliseconds;
//   - Retry-After: seconds (integer or decimal) or an HTTP date;
//   - the reset headers of the exhausted limit: OpenAI's
//     x-ratelimit-reset-requests / -tokens ("1s", "6m0s", "20ms"), used when
//     the matching x-ratelimit-remaining-* is 0 (or, with no remaining
//     header, the longest of them), and Anthropic's
//     anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-reset
//     (RFC 3339 times).
//
// It returns false when no header says anything usable; the caller then
// passes 0 to ReportRateLimited, which uses ratelimit.default_pushback_seconds.
func RetryAfterFromHeaders(h http.Header, now time.Time) (time.Duration, bool) {
	if v := strings.TrimSpace(h.Get("Retry-After-Ms")); v != "" {
		if ms, err := strconv.ParseFloat(v, 64); err == nil && ms > 0 {
			return time.Duration(ms * float64(time.Millisecond)), true
		}
	}
	if v := strings.TrimSpace(h.Get("Retry-After")); v != "" {
		if s, err := strconv.ParseFloat(v, 64); err == nil {
			if s > 0 {
				return time.Duration(s * float64(time.Second)), true
			}
		} else if t, err := http.ParseTime(v); err == nil {
			if d := t.Sub(now); d > 0 {
				return d, true
			}
		}
	}
	var best time.Duration
	exhausted := func(kind string) bool {
		v := strings.TrimSpace(h.Get("X-Ratelimit-Remaining-" + kind))
		return v == "" || v == "0"
	}
	for _, kind := range []string{"Requests", "Tokens"} {
		v := strings.TrimSpace(h.Get("X-Ratelimit-Reset-" + kind))
		if v == "" || !exhausted(kind) {
			continue
		}
		if d, err := time.ParseDuration(v); err == nil && d > best {
			best = d
		} else if s, err := strconv.ParseFloat(v, 64); err == nil && time.Duration(s*float64(time.Second)) > best {
			best = time.Duration(s * float64(time.Second))
		}
	}
	for _, kind := range []string{"requests", "tokens", "input-tokens", "output-tokens"} {
		v := strings.TrimSpace(h.Get("Anthropic-Ratelimit-" + kind + "-Reset"))
		if v == "" {
			continue
		}
		rem := strings.TrimSpace(h.Get("Anthropic-Ratelimit-" + kind + "-Remaining"))
		if rem != "" && rem != "0" {
			continue
		}
		if t, err := time.Parse(time.RFC3339, v); err == nil && t.Sub(now) > best {
			best = t.Sub(now)
		}
	}
	return best, best > 0
}
