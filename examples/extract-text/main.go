// Command extract-text is the demo's example job handler for the worker's
// `exec` kind. It reads the job as JSON on stdin, opens the document the
// payload's storage_path points to (relative to V3_DOCUMENT_ROOT), and
// prints a JSON result: pages (form-feed separated), words, characters and
// a checksum. It never prints the document's text.
//
// For ai_processing jobs whose payload has "task": "summarize" it stands in
// for a model, offline: the result is a fake summary built from the same
// counts (no text, no network), so the demo can run AI jobs without a vendor.
// Its "usage" member (made-up token counts derived from the word count) is
// metered by the worker like a model's.
//
// Exit codes follow the exec contract: 0 success, 75 retry later, anything
// else a permanent failure. Payload "simulate" values let the demo show
// the other outcomes: "flaky" fails the first attempt with 75, "corrupt"
// fails permanently.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

type job struct {
	ID         string          `json:"id"`
	Payload    json.RawMessage `json:"payload"`
	JobPayload json.RawMessage `json:"job_payload"`
}

type payload struct {
	StoragePath string `json:"storage_path"`
	Simulate    string `json:"simulate"`
	Task        string `json:"task"`
}

func main() {
	in, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(1, "read stdin: %v", err)
	}
	var j job
	if err := json.Unmarshal(in, &j); err != nil {
		fail(1, "job is not JSON: %v", err)
	}
	raw := j.Payload
	if len(raw) == 0 {
		raw = j.JobPayload
	}
	var p payload
	if err := json.Unmarshal(raw, &p); err != nil {
		fail(1, "payload is not a JSON object: %v", err)
	}
	switch p.Simulate {
	case "flaky":
		if os.Getenv("JOB_ATTEMPT") == "1" {
			fail(75, "storage temporarily unavailable (simulated); retry later")
		}
	case "corrupt":
		fail(1, "document is corrupt and cannot be read (simulated)")
	}
	if p.StoragePath == "" {
		fail(1, "payload has no storage_path")
	}
	root := os.Getenv("V3_DOCUMENT_ROOT")
	if root == "" {
		root = "."
	}
	clean := filepath.Clean("/" + p.StoragePath)
	body, err := os.ReadFile(filepath.Join(root, clean))
	if err != nil {
		fail(1, "cannot open the document: %v", err)
	}
	text := string(body)
	sum := sha256.Sum256(body)
	pages := strings.Count(strings.TrimRight(text, "\f"), "\f") + 1
	words := len(strings.Fields(text))
	out := map[string]any{
		"pages":      pages,
		"words":      words,
		"characters": len([]rune(text)),
		"sha256":     hex.EncodeToString(sum[:]),
	}
	if p.Task == "summarize" {
		prompt, completion := 60+words*4/3, 40
		out = map[string]any{
			"summary": fmt.Sprintf("Offline stand-in summary: a %d-page document of %d words (no model was called).", pages, words),
			"model":   "none (offline example handler)",
			"sha256":  hex.EncodeToString(sum[:]),
			"usage": map[string]int{"prompt_tokens": prompt, "completion_tokens": completion,
				"total_tokens": prompt + completion},
		}
	}
	_ = json.NewEncoder(os.Stdout).Encode(out)
}

func fail(code int, format string, a ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", a...)
	os.Exit(code)
}
