package wait

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestSleepCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Sleep(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Errorf("Sleep(canceled ctx, 1h) = %v, want context.Canceled", err)
	}
}

func TestSleepElapses(t *testing.T) {
	if err := Sleep(context.Background(), time.Millisecond); err != nil {
		t.Errorf("Sleep(1ms) = %v, want nil", err)
	}
}

func TestBackoff(t *testing.T) {
	var b Backoff
	var got []time.Duration
	for range 10 {
		got = append(got, b.Next())
	}
	want := []time.Duration{5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("Backoff.Next() sequence = %v, want %v ms", got, want)
		}
	}
	b.Reset()
	if d := b.Next(); d != 5*time.Millisecond {
		t.Errorf("Next() after Reset = %v, want 5ms", d)
	}
}
