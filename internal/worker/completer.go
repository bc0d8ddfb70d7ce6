package worker

import (
	"context"

	"github.com/v3ctl/v3ctl/internal/handlers"
	"github.com/v3ctl/v3ctl/internal/queue"
)

// The completer groups successful outcomes of concurrent jobs into one
// pipelined round trip and one commit (queue.CompleteMany). It never waits
// to fill a batch: it takes what has queued up while the previous batch was
// committing, so an idle worker completes a lone job at once and a busy one
// shares each WAL flush among many jobs. Jobs whose completion must also
// record usage keep their own transaction (completeTx).

const maxCompleteBatch = 64

// completers is how many batches may commit at once: while one waits for
// its WAL flush the next gathers, so commits overlap as they do when each
// job commits alone.
func completers(concurrency int) int { return min(max(concurrency/4, 1), 4) }

type completion struct {
	t    *task
	res  handlers.Result
	done chan completeOutcome
}

type completeOutcome struct {
	ok  bool
	err error
}

// batchable: the completion is a bare complete_job call.
func (w *Worker) batchable(res handlers.Result) bool {
	return !(res.Usage != nil && res.Usage.TotalTokens > 0 && w.hasUsageFunc)
}

// completeBatched queues a completion for the completer and waits for it.
func (w *Worker) completeBatched(t *task, res handlers.Result) (bool, error) {
	c := &completion{t: t, res: res, done: make(chan completeOutcome, 1)}
	select {
	case w.completions <- c:
	case <-w.bg.Done():
		return false, w.bg.Err()
	}
	select {
	case o := <-c.done:
		return o.ok, o.err
	case <-w.bg.Done():
		return false, w.bg.Err()
	}
}

// completer runs until ctx is done.
func (w *Worker) completer(ctx context.Context) {
	batch := make([]*completion, 0, maxCompleteBatch)
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return
		case c := <-w.completions:
			batch = append(batch, c)
		}
	more:
		for len(batch) < maxCompleteBatch {
			select {
			case c := <-w.completions:
				batch = append(batch, c)
			default:
				break more
			}
		}
		w.completeBatch(ctx, batch)
	}
}

func (w *Worker) completeBatch(ctx context.Context, batch []*completion) {
	if len(batch) > 1 {
		cs := make([]queue.Completion, len(batch))
		for i, c := range batch {
			cs[i] = queue.Completion{Lease: c.t.lease, Result: c.res.Output}
		}
		var oks []bool
		err := w.callDB(ctx, "complete batch", func(c context.Context) (e error) {
			if w.hasCompleteSet {
				oks, e = queue.CompleteMany(c, w.pool, cs)
			} else {
				oks, e = queue.CompletePipelined(c, w.pool, cs)
			}
			return e
		})
		if err == nil {
			w.m.CompleteBatches.Observe(float64(len(batch)))
			for i, c := range batch {
				c.done <- completeOutcome{ok: oks[i]}
			}
			return
		}
		// The batch committed nothing (or its answer was lost): complete the
		// jobs one by one, with retries; the lease token fences repeats.
	}
	for _, c := range batch {
		var ok bool
		err := w.retryDB(ctx, "complete", func(cx context.Context) (e error) {
			ok, e = queue.Complete(cx, w.pool, c.t.lease, c.res.Output)
			return e
		})
		if err == nil {
			w.m.CompleteBatches.Observe(1)
		}
		c.done <- completeOutcome{ok: ok, err: err}
	}
}
