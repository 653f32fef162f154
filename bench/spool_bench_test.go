package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"mailproxy/spool"
)

// The device relay's spool: intake (the time to a 250 is the time Enqueue
// takes: write, fsync the file, rename, fsync the directory), and a
// restart with 10,000 messages queued.

func spoolMessage(size int) []byte {
	var b bytes.Buffer
	b.WriteString("From: Scanner <scanner@contoso.com>\r\nTo: bob@example.com\r\nSubject: scan\r\n\r\n")
	line := strings.Repeat("0123456789abcdef", 4) + "\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	return b.Bytes()[:size]
}

func openBenchSpool(b *testing.B, dir string, open spool.Opener) *spool.Spool {
	b.Helper()
	st, err := spool.OpenDir(dir)
	if err != nil {
		b.Fatal(err)
	}
	if open == nil {
		open = func(context.Context, string) (spool.Submitter, error) { return nil, io.EOF }
	}
	sp, err := spool.New(st, spool.Options{Open: open, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	return sp
}

func benchEnvelope() *spool.Envelope {
	return &spool.Envelope{Device: "mfp", Account: "scanner@contoso.com", Mailbox: "scanner@contoso.com",
		From: "scanner@contoso.com", OrigFrom: "scanner@contoso.com", To: []string{"bob@example.com"}}
}

// BenchmarkSpoolIntake: 50 KiB messages, fsync on, one device and eight
// at once; reports messages/s and the p99 time to the 250.
func BenchmarkSpoolIntake(b *testing.B) {
	msg := spoolMessage(50 << 10)
	for _, devices := range []int{1, 8} {
		b.Run(fmt.Sprintf("devices=%d", devices), func(b *testing.B) {
			sp := openBenchSpool(b, b.TempDir(), nil)
			defer sp.Shutdown(context.Background())
			var mu sync.Mutex
			lat := make([]time.Duration, 0, b.N)
			b.SetBytes(int64(len(msg)))
			b.SetParallelism(devices) // GOMAXPROCS * devices goroutines
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				var mine []time.Duration
				for pb.Next() {
					t0 := time.Now()
					if _, err := sp.Enqueue(benchEnvelope(), bytes.NewReader(msg)); err != nil {
						b.Error(err)
						return
					}
					mine = append(mine, time.Since(t0))
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			})
			elapsed := time.Since(start)
			slices.Sort(lat)
			if len(lat) > 0 {
				b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "msgs/s")
				b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
			}
		})
	}
}

// countingSubmitter accepts everything and signals the first DATA.
type countingSubmitter struct {
	first chan struct{}
	once  *sync.Once
}

func (s countingSubmitter) Mail(string, *smtp.MailOptions) error { return nil }
func (s countingSubmitter) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s countingSubmitter) Reset() error                         { return nil }
func (s countingSubmitter) Quit() error                          { return nil }
func (s countingSubmitter) Data(r io.Reader) (string, error) {
	io.Copy(io.Discard, r)
	s.once.Do(func() { close(s.first) })
	return "OK", nil
}

// BenchmarkSpoolRestart10k: a spool with 10,000 queued messages (4 KiB
// each: the bodies stay on disk) is opened again; reports the time until
// delivery resumes (the first DATA) and the heap the queue holds.
func BenchmarkSpoolRestart10k(b *testing.B) {
	const queued = 10000
	dir := b.TempDir()
	sp := openBenchSpool(b, dir, nil)
	msg := spoolMessage(4 << 10)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < queued; i += 8 {
				if _, err := sp.Enqueue(benchEnvelope(), bytes.NewReader(msg)); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	sp.Shutdown(context.Background())
	b.ResetTimer()
	var heap uint64
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		first := make(chan struct{})
		sub := countingSubmitter{first: first, once: new(sync.Once)}
		t0 := time.Now()
		sp := openBenchSpool(b, dir, func(context.Context, string) (spool.Submitter, error) { return sub, nil })
		runtime.GC()
		runtime.ReadMemStats(&after)
		heap = after.HeapAlloc - before.HeapAlloc
		sp.Start()
		<-first
		b.ReportMetric(float64(time.Since(t0).Milliseconds()), "ms-to-resume")
		b.StopTimer()
		sp.Shutdown(context.Background())
		b.StartTimer()
	}
	b.ReportMetric(float64(heap)/(1<<20), "MiB-per-10k-queued")
}
