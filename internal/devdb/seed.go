package devdb

import (
	_ "embed"
	"encoding/json"
)

// SeedSQL is the demo data of `v3ctl dev seed` (see seed.sql): three
// fictional accounts (alice@example.test with a child profile, bob, carol),
// a share, plans and six shell files pointing at examples/documents. It is
// idempotent and runs as one multi-statement script.
//
//go:embed seed.sql
var SeedSQL string

// SeedAccountIDs are the auth.users ids of the demo accounts, in order.
var SeedAccountIDs = []string{
	"de300000-0000-4000-8000-00000000a11c",
	"de300000-0000-4000-8000-000000000b0b",
	"de300000-0000-4000-8000-00000000ca01",
}

// SeedFile is one seeded shell file.
type SeedFile struct {
	ID          string
	PatientID   string
	StoragePath string
	Pages       int
}

// SeedFiles are the shell files of SeedSQL; StoragePath is relative to
// examples/documents.
var SeedFiles = []SeedFile{
	{"de300002-0000-4000-8000-000000000001", "de300001-0000-4000-8000-00000000a11c", "lab-results-2026-03.txt", 2},
	{"de300002-0000-4000-8000-000000000002", "de300001-0000-4000-8000-00000000a11c", "imaging-report.txt", 1},
	{"de300002-0000-4000-8000-000000000003", "de300001-0000-4000-8000-0000a11cc41d", "vaccination-record.txt", 1},
	{"de300002-0000-4000-8000-000000000004", "de300001-0000-4000-8000-000000000b0b", "prescription.txt", 1},
	{"de300002-0000-4000-8000-000000000005", "de300001-0000-4000-8000-000000000b0b", "referral-letter.txt", 2},
	{"de300002-0000-4000-8000-000000000006", "de300001-0000-4000-8000-00000000ca01", "discharge-summary.txt", 1},
}

// SeedJob is one job of the demo batch.
type SeedJob struct {
	Type        string
	Lane        string
	Category    string
	Priority    int
	MaxRetries  int
	Name        string
	Payload     json.RawMessage
	PatientID   string
	ShellFileID string
	// Note says what the job demonstrates (empty: a plain success).
	Note string
}

// SeedJobs is a realistic batch for the seeded data: text extraction for
// every shell file (fast_queue for one-page documents, standard_queue for
// longer ones), two AI summaries, and a system_maintenance run. The payload
// field "simulate" makes the example handler (examples/extract-text) fail
// the imaging report's first attempt with a retryable error and the
// referral letter permanently, so a run shows a retry and a dead letter.
// Every job carries correlationID.
func SeedJobs(correlationID string) []SeedJob {
	var jobs []SeedJob
	simulate := map[string]string{"imaging-report.txt": "flaky", "referral-letter.txt": "corrupt"}
	notes := map[string]string{"flaky": "fails once (exit 75), retried", "corrupt": "corrupt document (exit 1): dead letter"}
	payload := func(f SeedFile, extra map[string]any) json.RawMessage {
		m := map[string]any{"shell_file_id": f.ID, "patient_id": f.PatientID, "storage_path": f.StoragePath,
			"correlation_id": correlationID}
		for k, v := range extra {
			m[k] = v
		}
		b, _ := json.Marshal(m)
		return b
	}
	for _, f := range SeedFiles {
		lane, prio := "fast_queue", 3
		if f.Pages > 1 {
			lane, prio = "standard_queue", 5
		}
		extra := map[string]any{}
		if s := simulate[f.StoragePath]; s != "" {
			extra["simulate"] = s
		}
		jobs = append(jobs, SeedJob{Type: "shell_file_processing", Lane: lane, Category: "standard", Priority: prio,
			MaxRetries: 2, Name: "extract text: " + f.StoragePath, Payload: payload(f, extra),
			PatientID: f.PatientID, ShellFileID: f.ID, Note: notes[simulate[f.StoragePath]]})
	}
	for _, ai := range []struct {
		file     int
		lane     string
		priority int
	}{{0, "ai_queue_complex", 4}, {3, "ai_queue_simple", 6}} {
		f := SeedFiles[ai.file]
		jobs = append(jobs, SeedJob{Type: "ai_processing", Lane: ai.lane, Category: "standard", Priority: ai.priority,
			MaxRetries: 2, Name: "summarise: " + f.StoragePath, Payload: payload(f, map[string]any{"task": "summarize"}),
			PatientID: f.PatientID, ShellFileID: f.ID})
	}
	b, _ := json.Marshal(map[string]any{"purge_after_days": 30, "correlation_id": correlationID})
	jobs = append(jobs, SeedJob{Type: "system_maintenance", Category: "maintenance", Priority: 9, MaxRetries: 1,
		Name: "nightly maintenance", Payload: b})
	return jobs
}
