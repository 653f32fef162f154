package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
)

// report collects the results of a run.
type report struct {
	opts    options
	machine string
	rows    []row
	notes   []string
	elapsed time.Duration
}

// row is one line of the results table.
type row struct {
	workload, direct, proxied, ratio, target, met string
}

func (r *report) add(x row) { r.rows = append(r.rows, x) }

func (r *report) note(format string, args ...any) {
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

// failed returns the workloads whose target was missed.
func (r *report) failed() []string {
	var out []string
	for _, x := range r.rows {
		if x.met == "no" {
			out = append(out, x.workload)
		}
	}
	return out
}

func (r *report) write(w io.Writer) {
	fmt.Fprintf(w, "## mailproxy bench results\n\n%s\n", r.machine)
	if r.opts.linkMiBps > 0 {
		fmt.Fprintf(w, "- the fake IMAP upstream sits behind a shared %.0f MiB/s link (-link-mibps)\n", r.opts.linkMiBps)
	}
	if r.elapsed > 0 {
		fmt.Fprintf(w, "- run took %s, load average at the end %s\n", r.elapsed.Round(time.Second), loadAverage())
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| workload | direct | proxied | ratio | target | met? |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for _, x := range r.rows {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", x.workload, x.direct, x.proxied, x.ratio, x.target, x.met)
	}
	if len(r.notes) > 0 {
		fmt.Fprintln(w)
		for _, n := range r.notes {
			fmt.Fprintf(w, "- %s\n", n)
		}
	}
}

// describeMachine is the "machine" paragraph: CPU, cores, Go, kernel.
func describeMachine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	kernel := "?"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = strings.TrimSpace(string(b))
	}
	return fmt.Sprintf("- machine: %d CPUs (%s), %s %s/%s, Linux %s, GOMAXPROCS %d\n- date: %s, load average at start %s",
		runtime.NumCPU(), model, runtime.Version(), runtime.GOOS, runtime.GOARCH, kernel,
		runtime.GOMAXPROCS(0), time.Now().UTC().Format("2006-01-02 15:04 UTC"), loadAverage())
}

// loadAverage is the 1, 5 and 15 minute load average: other work on the
// machine skews every number here.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// quantile returns the nearest-rank q-quantile of xs (0 for none).
func quantile[T int64 | float64 | time.Duration](xs []T, q float64) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}

func median[T int64 | float64 | time.Duration](xs []T) T { return quantile(xs, 0.5) }

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

// mibps is bytes per duration in MiB/s.
func mibps(bytes int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(bytes) / (1 << 20) / d.Seconds()
}

func kib(b int64) string { return fmt.Sprintf("%.1f KiB", float64(b)/1024) }

func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "no"
}

// throughputCell shows the median and the slow tail: the sample only 1 %
// of samples were slower than (the slowest one when there are few).
func throughputCell(xs []float64, unit string) string {
	return fmt.Sprintf("%.1f %s (p99 %.1f)", median(xs), unit, quantile(xs, 0.01))
}

func latencyCell(xs []time.Duration) string {
	return fmt.Sprintf("%s (p99 %s)", ms(median(xs)), ms(quantile(xs, 0.99)))
}

// pairedRatio is the median over rounds of b[i]/a[i]: each round runs
// both modes back to back, so a ratio within a round sees the same
// background load, which drifts over a run on a shared machine.
func pairedRatio(a, b []float64) float64 {
	n := min(len(a), len(b))
	rs := make([]float64, 0, n)
	for i := range n {
		if a[i] > 0 {
			rs = append(rs, b[i]/a[i])
		}
	}
	return median(rs)
}

// ratioCell shows the paired ratio and the ratio of the medians.
func ratioCell(a, b []float64) string {
	return fmt.Sprintf("%.2f× (medians %.2f×)", pairedRatio(a, b), median(b)/median(a))
}
