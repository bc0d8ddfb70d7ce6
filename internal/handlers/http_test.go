package handlers

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestHTTPSignedPost(t *testing.T) {
	secret := "s3cret"
	var got Job
	var sigOK atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		sigOK.Store(r.Method == http.MethodPost &&
			Verify([]byte(secret), r.Header.Get(HeaderTimestamp), body, r.Header.Get(HeaderSignature)) &&
			r.Header.Get("Authorization") == "Bearer tok" &&
			r.Header.Get(HeaderJobID) == testJob().ID && r.Header.Get("Idempotency-Key") == testJob().ID &&
			r.Header.Get(HeaderCorrID) == "corr-1" && r.Header.Get(HeaderAttempt) == "2")
		_ = json.Unmarshal(body, &got)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"delivered":true}`))
	}))
	defer srv.Close()
	env := map[string]string{"WEBHOOK_SECRET": secret, "TOK": "tok"}
	h, err := NewHTTP(Spec{URL: srv.URL + "/hook", SecretEnv: "WEBHOOK_SECRET", BearerTokenEnv: "TOK"}, Deps{Getenv: func(k string) string { return env[k] }})
	if err != nil {
		t.Fatal(err)
	}
	res, err := h.Handle(context.Background(), testJob())
	if err != nil {
		t.Fatal(err)
	}
	if !sigOK.Load() {
		t.Fatal("signature or headers did not verify")
	}
	if string(res.Output) != `{"delivered":true}` || got.ID != testJob().ID || string(got.Payload) != string(testJob().Payload) {
		t.Fatalf("result %s, received %+v", res.Output, got)
	}
	// A tampered body does not verify.
	if Verify([]byte(secret), "1", []byte("x"), Sign([]byte(secret), "1", []byte("y"))) {
		t.Fatal("Verify accepted a wrong body")
	}
}

func TestHTTPStatusClassification(t *testing.T) {
	cases := []struct {
		status     int
		retryAfter string
		kind       Kind
		delay      time.Duration
	}{
		{429, "7", KindRateLimited, 7 * time.Second},
		{429, "", KindRateLimited, 30 * time.Second},
		{503, "2", KindRateLimited, 2 * time.Second},
		{503, "", KindRetryable, 0},
		{500, "", KindRetryable, 0},
		{502, "", KindRetryable, 0},
		{408, "", KindRetryable, 0},
		{400, "", KindPermanent, 0},
		{404, "", KindPermanent, 0},
		{401, "", KindPermanent, 0},
	}
	for _, c := range cases {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if c.retryAfter != "" {
				w.Header().Set("Retry-After", c.retryAfter)
			}
			w.WriteHeader(c.status)
			_, _ = w.Write([]byte(`{"error":"nope"}`))
		}))
		h, err := NewHTTP(Spec{URL: srv.URL}, Deps{})
		if err != nil {
			t.Fatal(err)
		}
		_, err = h.Handle(context.Background(), testJob())
		k, d := Classify(err)
		if err == nil || k != c.kind || d != c.delay {
			t.Errorf("%d retry-after %q: kind %v delay %v err %v; want %v %v", c.status, c.retryAfter, k, d, err, c.kind, c.delay)
		}
		srv.Close()
	}
}

func TestHTTPUnreachableIsRetryable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	u := srv.URL
	srv.Close()
	h, _ := NewHTTP(Spec{URL: u, Timeout: 2 * time.Second}, Deps{})
	_, err := h.Handle(context.Background(), testJob())
	if k, _ := Classify(err); err == nil || k != KindRetryable {
		t.Fatalf("err %v kind %v", err, k)
	}
}

func TestHTTPConfigErrors(t *testing.T) {
	if _, err := NewHTTP(Spec{URL: "ftp://x"}, Deps{}); err == nil {
		t.Fatal("ftp URL accepted")
	}
	_, err := NewHTTP(Spec{URL: "https://x.example/hook", SecretEnv: "MISSING_SECRET_X"}, Deps{Getenv: func(string) string { return "" }})
	if err == nil || !strings.Contains(err.Error(), "MISSING_SECRET_X") {
		t.Fatalf("missing secret: %v", err)
	}
}

func TestRetryAfterHTTPDate(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	h := http.Header{}
	h.Set("Retry-After", now.Add(90*time.Second).Format(http.TimeFormat))
	if d, ok := RetryAfter(h, now); !ok || d != 90*time.Second {
		t.Fatalf("got %v %v", d, ok)
	}
	h = http.Header{}
	h.Set("retry-after-ms", "250")
	if d, ok := RetryAfter(h, now); !ok || d != 250*time.Millisecond {
		t.Fatalf("got %v %v", d, ok)
	}
}
