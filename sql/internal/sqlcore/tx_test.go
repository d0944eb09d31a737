package sqlcore

import (
	"context"
	"errors"
	"testing"
	"time"
)

// lateTimer is a context whose deadline has passed while its timer has
// not fired yet.
type lateTimer struct{ context.Context }

func (lateTimer) Deadline() (time.Time, bool) { return time.Now().Add(-time.Millisecond), true }

func TestCtxErrSeesAPassedDeadline(t *testing.T) {
	if err := CtxErr(context.Background()); err != nil {
		t.Errorf("CtxErr(Background) = %v", err)
	}
	if err := CtxErr(lateTimer{context.Background()}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("CtxErr past the deadline = %v, want context.DeadlineExceeded", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := CtxErr(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("CtxErr of a cancelled context = %v", err)
	}
	live, stop := context.WithTimeout(context.Background(), time.Hour)
	defer stop()
	if err := CtxErr(live); err != nil {
		t.Errorf("CtxErr before the deadline = %v", err)
	}
}
