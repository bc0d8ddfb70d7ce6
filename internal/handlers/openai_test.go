package handlers

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeOpenAI speaks the chat-completions wire format.
type fakeOpenAI struct {
	calls    atomic.Int64
	storm    int64 // the first storm calls get 429
	status   int   // when non-zero, every call gets this status
	headers  map[string]string
	lastBody atomic.Value
}

func (f *fakeOpenAI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := f.calls.Add(1)
	if r.URL.Path != "/v1/chat/completions" || r.Header.Get("Authorization") != "Bearer sk-test" {
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}`))
		return
	}
	b, _ := io.ReadAll(r.Body)
	f.lastBody.Store(b)
	for k, v := range f.headers {
		w.Header().Set(k, v)
	}
	w.Header().Set("Content-Type", "application/json")
	if f.status != 0 {
		w.WriteHeader(f.status)
		_, _ = w.Write([]byte(`{"error":{"message":"boom","type":"server_error"}}`))
		return
	}
	if n <= f.storm {
		w.Header().Set("retry-after", "1")
		w.Header().Set("x-ratelimit-remaining-requests", "0")
		w.Header().Set("x-ratelimit-reset-requests", "1s")
		w.WriteHeader(http.StatusTooManyRequests)
		_, _ = w.Write([]byte(`{"error":{"message":"Rate limit reached for gpt-4o-mini","type":"requests","code":"rate_limit_exceeded"}}`))
		return
	}
	var req chatRequest
	_ = json.Unmarshal(b, &req)
	_, _ = w.Write([]byte(`{"id":"chatcmpl-123","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini-2024-07-18",
"choices":[{"index":0,"message":{"role":"assistant","content":"{\"diagnosis\":\"none\"}"},"logprobs":null,"finish_reason":"stop"}],
"usage":{"prompt_tokens":20,"completion_tokens":22,"total_tokens":42}}`))
}

type fakeCapacity struct {
	mu       sync.Mutex
	free     int
	acquired int
	released []int
	denied   int
}

func (c *fakeCapacity) Acquire(_ context.Context, r CapacityRequest) (string, time.Duration, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.free <= 0 {
		c.denied++
		return "", 20 * time.Millisecond, nil
	}
	c.free--
	c.acquired++
	return "hold", 0, nil
}

func (c *fakeCapacity) Release(_ context.Context, hold string, actual int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.free++
	c.released = append(c.released, actual)
	return nil
}

func newTestOpenAI(t *testing.T, f *fakeOpenAI, capy Capacity, mod func(*Spec)) *OpenAI {
	t.Helper()
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	s := Spec{Kind: "openai", BaseURL: srv.URL + "/v1", Model: "gpt-4o-mini", APIKeyEnv: "OPENAI_API_KEY", Provider: "openai", Endpoint: "gpt-4o-mini"}
	if mod != nil {
		mod(&s)
	}
	o, err := NewOpenAI(s, Deps{Capacity: capy, Getenv: func(k string) string {
		if k == "OPENAI_API_KEY" {
			return "sk-test"
		}
		return ""
	}})
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func aiJob() Job {
	j := testJob()
	j.Type = "ai_processing"
	j.Payload = json.RawMessage(`{"prompt":"Summarise this record","estimated_tokens":300}`)
	return j
}

func TestOpenAISuccessUsageAndCapacity(t *testing.T) {
	f := &fakeOpenAI{}
	capy := &fakeCapacity{free: 1}
	o := newTestOpenAI(t, f, capy, func(s *Spec) { s.SystemPrompt = "You are careful." })
	res, err := o.Handle(context.Background(), aiJob())
	if err != nil {
		t.Fatal(err)
	}
	if res.Usage == nil || res.Usage.TotalTokens != 42 || res.Usage.PromptTokens != 20 {
		t.Fatalf("usage %+v", res.Usage)
	}
	var out map[string]any
	_ = json.Unmarshal(res.Output, &out)
	if out["content"] != `{"diagnosis":"none"}` || out["finish_reason"] != "stop" {
		t.Fatalf("output %s", res.Output)
	}
	var sent chatRequest
	_ = json.Unmarshal(f.lastBody.Load().([]byte), &sent)
	if sent.Model != "gpt-4o-mini" || len(sent.Messages) != 2 || sent.Messages[0].Role != "system" || sent.Messages[1].Content != "Summarise this record" {
		t.Fatalf("request %+v", sent)
	}
	if capy.acquired != 1 || len(capy.released) != 1 || capy.released[0] != 42 || capy.free != 1 {
		t.Fatalf("capacity %+v", capy)
	}
}

func TestOpenAIErrors(t *testing.T) {
	for _, c := range []struct {
		status int
		kind   Kind
	}{{500, KindRetryable}, {400, KindPermanent}, {404, KindPermanent}} {
		o := newTestOpenAI(t, &fakeOpenAI{status: c.status}, nil, nil)
		_, err := o.Handle(context.Background(), aiJob())
		if k, _ := Classify(err); err == nil || k != c.kind {
			t.Errorf("%d: err %v kind %v", c.status, err, k)
		}
	}
	o := newTestOpenAI(t, &fakeOpenAI{}, nil, nil)
	j := aiJob()
	j.Payload = json.RawMessage(`{"shell_file_id":"x"}`)
	if _, err := o.Handle(context.Background(), j); err == nil {
		t.Fatal("a payload without a prompt was accepted")
	} else if k, _ := Classify(err); k != KindPermanent {
		t.Fatalf("no prompt: kind %v", k)
	}
	// The wrong key gives a permanent 401.
	o.APIKey = "sk-wrong"
	if _, err := o.Handle(context.Background(), aiJob()); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("wrong key: %v", err)
	}
}

func TestOpenAI429RetryAfterAndGate(t *testing.T) {
	f := &fakeOpenAI{storm: 1}
	o := newTestOpenAI(t, f, nil, nil)
	_, err := o.Handle(context.Background(), aiJob())
	k, d := Classify(err)
	if k != KindRateLimited || d != time.Second {
		t.Fatalf("429: kind %v delay %v err %v", k, d, err)
	}
	// The next call waits for the block to expire locally, then succeeds
	// with exactly one more request to the server.
	if _, err := o.Handle(context.Background(), aiJob()); err != nil {
		t.Fatal(err)
	}
	if f.calls.Load() != 2 {
		t.Fatalf("calls %d", f.calls.Load())
	}
	// A block longer than capacity_wait hands the job back without a call.
	o.CapacityWait = 10 * time.Millisecond
	o.block(5 * time.Second)
	_, err = o.Handle(context.Background(), aiJob())
	if k, d := Classify(err); k != KindRateLimited || d < 4*time.Second || f.calls.Load() != 2 {
		t.Fatalf("gate: kind %v delay %v calls %d", k, d, f.calls.Load())
	}
}

func TestOpenAI429ResetHeaders(t *testing.T) {
	// No retry-after: use the reset of the exhausted budget.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("x-ratelimit-remaining-requests", "12")
		w.Header().Set("x-ratelimit-reset-requests", "20ms")
		w.Header().Set("x-ratelimit-remaining-tokens", "0")
		w.Header().Set("x-ratelimit-reset-tokens", "6m0s")
		w.WriteHeader(429)
	}))
	defer srv.Close()
	o, err := NewOpenAI(Spec{BaseURL: srv.URL, Model: "m"}, Deps{Getenv: func(string) string { return "k" }})
	if err != nil {
		t.Fatal(err)
	}
	_, err = o.Handle(context.Background(), aiJob())
	if k, d := Classify(err); k != KindRateLimited || d != 6*time.Minute {
		t.Fatalf("kind %v delay %v", k, d)
	}
	if d, ok := ParseResetDuration("1h2m3.5s"); !ok || d != time.Hour+2*time.Minute+3500*time.Millisecond {
		t.Fatal(d)
	}
}

// A 429 saying "retry now" (Retry-After: 0) still pauses a second, so the
// pause can be shared and jobs do not bounce straight back.
func TestOpenAI429RetryAfterZeroPausesASecond(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "0")
		w.WriteHeader(429)
	}))
	defer srv.Close()
	o, err := NewOpenAI(Spec{BaseURL: srv.URL, Model: "m"}, Deps{Getenv: func(string) string { return "k" }})
	if err != nil {
		t.Fatal(err)
	}
	_, err = o.Handle(context.Background(), aiJob())
	if k, d := Classify(err); k != KindRateLimited || d != time.Second {
		t.Fatalf("kind %v delay %v", k, d)
	}
}

func TestOpenAIRemainingZeroBlocksNextCall(t *testing.T) {
	f := &fakeOpenAI{headers: map[string]string{"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "10m0s"}}
	o := newTestOpenAI(t, f, nil, func(s *Spec) { s.CapacityWait = time.Second })
	if _, err := o.Handle(context.Background(), aiJob()); err != nil {
		t.Fatal(err)
	}
	_, err := o.Handle(context.Background(), aiJob())
	if k, d := Classify(err); k != KindRateLimited || d < 9*time.Minute || f.calls.Load() != 1 {
		t.Fatalf("kind %v delay %v calls %d", k, d, f.calls.Load())
	}
}

// TestOpenAI429Storm: many concurrent jobs against a server that answers a
// burst of 429s; every job either succeeds or is handed back rate-limited,
// none fails, and capacity never exceeds its limit and is all released.
func TestOpenAI429Storm(t *testing.T) {
	f := &fakeOpenAI{storm: 15}
	capy := &fakeCapacity{free: 3}
	o := newTestOpenAI(t, f, capy, func(s *Spec) { s.CapacityWait = 3 * time.Second })
	var ok, limited, other atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each "job" retries when rate limited, as the queue would.
			for try := 0; try < 10; try++ {
				_, err := o.Handle(context.Background(), aiJob())
				if err == nil {
					ok.Add(1)
					return
				}
				if k, _ := Classify(err); k != KindRateLimited {
					other.Add(1)
					return
				}
				limited.Add(1)
			}
		}()
	}
	wg.Wait()
	if ok.Load() != 20 || other.Load() != 0 || limited.Load() == 0 {
		t.Fatalf("ok %d limited %d other %d", ok.Load(), limited.Load(), other.Load())
	}
	capy.mu.Lock()
	defer capy.mu.Unlock()
	if capy.free != 3 || capy.acquired != len(capy.released) {
		t.Fatalf("capacity leaked: free %d acquired %d released %d", capy.free, capy.acquired, len(capy.released))
	}
}

// policyCapacity is a fakeCapacity with a database wait policy.
type policyCapacity struct {
	fakeCapacity
	wait time.Duration
}

func (c *policyCapacity) MaxWait(context.Context) (time.Duration, bool) { return c.wait, true }

// Without capacity_wait the handler waits as long as the Capacity's policy
// (ratelimit.max_wait_seconds) allows; 0 hands the job back at once, and a
// configured capacity_wait wins over the policy.
func TestOpenAICapacityWaitPolicy(t *testing.T) {
	f := &fakeOpenAI{}
	capy := &policyCapacity{wait: 0}
	o := newTestOpenAI(t, f, capy, nil)
	_, err := o.Handle(context.Background(), aiJob())
	if k, _ := Classify(err); k != KindRateLimited || capy.denied != 1 || f.calls.Load() != 0 {
		t.Fatalf("policy 0: kind %v denied %d calls %d err %v", k, capy.denied, f.calls.Load(), err)
	}
	// A policy of 1 s: the refusals (retry after 20 ms) are waited out until
	// capacity frees up.
	capy.wait = time.Second
	go func() {
		time.Sleep(100 * time.Millisecond)
		capy.mu.Lock()
		capy.free = 1
		capy.mu.Unlock()
	}()
	if _, err := o.Handle(context.Background(), aiJob()); err != nil {
		t.Fatalf("policy 1s: %v", err)
	}
	if capy.denied < 2 || f.calls.Load() != 1 {
		t.Fatalf("policy 1s: denied %d calls %d", capy.denied, f.calls.Load())
	}
	// capacity_wait configured: the policy is not asked.
	capy2 := &policyCapacity{wait: time.Hour}
	o2 := newTestOpenAI(t, f, capy2, func(s *Spec) { s.CapacityWait = 30 * time.Millisecond })
	if _, err := o2.Handle(context.Background(), aiJob()); err == nil {
		t.Fatal("capacity_wait 30ms: want a rate-limited hand-back, got success")
	}
}
