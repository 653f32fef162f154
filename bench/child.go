package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Child processes are this binary run again with "-role NAME" as the first
// arguments (TestMain does the same for the test binary). A child writes
// one JSON line describing itself to stdout, then answers one line for
// each command line it reads on stdin. EOF on stdin or "quit" ends it.

// wantNoFile is the RLIMIT_NOFILE every process asks for: 10,000 idle
// sessions are 20,000 descriptors in the proxy.
const wantNoFile = 1 << 16

const (
	childStartTimeout = 2 * time.Minute // building a 100 MiB mailbox ×8 takes a while
	childCallTimeout  = time.Minute
	childStopTimeout  = 30 * time.Second
)

// runRole runs a child role and returns the exit code.
func runRole(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "bench: -role needs a name")
		return 2
	}
	raiseNoFile(wantNoFile)
	var err error
	switch args[0] {
	case "upstream":
		err = runUpstream(args[1:], os.Stdin, os.Stdout)
	case "proxy":
		err = runProxy(args[1:], os.Stdin, os.Stdout)
	case "pop3-upstream":
		err = runPOP3Upstream(args[1:], os.Stdin, os.Stdout)
	case "pop3-proxy":
		err = runPOP3Proxy(os.Stdin, os.Stdout)
	default:
		err = fmt.Errorf("unknown role %q", args[0])
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

// raiseNoFile raises the open file limit to want (or as far as allowed)
// and returns the soft limit in force.
func raiseNoFile(want uint64) uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0
	}
	if rl.Cur >= want {
		return rl.Cur
	}
	if rl.Max < want {
		// Raising the hard limit needs CAP_SYS_RESOURCE.
		up := syscall.Rlimit{Cur: want, Max: want}
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &up) == nil {
			return want
		}
	}
	rl.Cur = min(want, rl.Max)
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	return rl.Cur
}

// child is a running child process.
type child struct {
	name string
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Reader
	pid  int

	mu     sync.Mutex // serializes calls
	waited chan error
}

// startChild starts this executable in role with args, sends it config
// (unless nil) as its first stdin line, and decodes its first stdout line
// into hello.
func startChild(role string, args []string, config, hello any) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("start %s: find own executable: %w", role, err)
	}
	cmd := exec.Command(exe, append([]string{"-role", role}, args...)...)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", role, err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", role, err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", role, err)
	}
	c := &child{name: role, cmd: cmd, in: in, out: bufio.NewReaderSize(out, 64<<10), pid: cmd.Process.Pid, waited: make(chan error, 1)}
	if config != nil {
		if err := writeJSONLine(in, config); err != nil {
			c.kill()
			return nil, fmt.Errorf("start %s: send config: %w", role, err)
		}
	}
	line, err := c.readLine(childStartTimeout)
	if err != nil {
		c.kill()
		return nil, fmt.Errorf("start %s: read its address line: %w", role, err)
	}
	if err := json.Unmarshal([]byte(line), hello); err != nil {
		c.kill()
		return nil, fmt.Errorf("start %s: decode %q: %w", role, line, err)
	}
	return c, nil
}

// readLine reads one stdout line within timeout.
func (c *child) readLine(timeout time.Duration) (string, error) {
	type result struct {
		s   string
		err error
	}
	ch := make(chan result, 1)
	go func() {
		s, err := c.out.ReadString('\n')
		ch <- result{strings.TrimRight(s, "\r\n"), err}
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case r := <-ch:
		if r.err != nil {
			return "", fmt.Errorf("%s (pid %d) stdout: %w", c.name, c.pid, r.err)
		}
		return r.s, nil
	case <-t.C:
		return "", fmt.Errorf("%s (pid %d): no answer within %s", c.name, c.pid, timeout)
	}
}

// call sends a command line and returns the answer line. Answers starting
// with "error: " become errors.
func (c *child) call(cmd string) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, err := io.WriteString(c.in, cmd+"\n"); err != nil {
		return "", fmt.Errorf("%s %q: %w", c.name, cmd, err)
	}
	ans, err := c.readLine(childCallTimeout)
	if err != nil {
		return "", fmt.Errorf("%s %q: %w", c.name, cmd, err)
	}
	if msg, ok := strings.CutPrefix(ans, "error: "); ok {
		return "", fmt.Errorf("%s %q: %s", c.name, cmd, msg)
	}
	return ans, nil
}

// callJSON sends cmd and decodes the answer into v.
func (c *child) callJSON(cmd string, v any) error {
	ans, err := c.call(cmd)
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(ans), v); err != nil {
		return fmt.Errorf("%s %q: decode answer: %w", c.name, cmd, err)
	}
	return nil
}

// stop asks the child to quit and waits for it, killing it after a while.
func (c *child) stop() error {
	c.mu.Lock()
	io.WriteString(c.in, "quit\n")
	c.in.Close()
	c.mu.Unlock()
	go func() { c.waited <- c.cmd.Wait() }()
	t := time.NewTimer(childStopTimeout)
	defer t.Stop()
	select {
	case err := <-c.waited:
		if err != nil {
			return fmt.Errorf("%s (pid %d) exit: %w", c.name, c.pid, err)
		}
		return nil
	case <-t.C:
		c.cmd.Process.Kill()
		<-c.waited
		return fmt.Errorf("%s (pid %d) did not exit within %s; killed", c.name, c.pid, childStopTimeout)
	}
}

func (c *child) kill() {
	c.in.Close()
	c.cmd.Process.Kill()
	c.cmd.Wait()
}

// serveCommands reads command lines from in and answers each with the
// line handle returns (or "error: ..."), until EOF or "quit".
func serveCommands(in io.Reader, out io.Writer, handle func(cmd string, arg string) (string, error)) error {
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		cmd, arg, _ := strings.Cut(strings.TrimSpace(sc.Text()), " ")
		if cmd == "quit" {
			return nil
		}
		ans, err := handle(cmd, arg)
		if err != nil {
			ans = "error: " + strings.ReplaceAll(err.Error(), "\n", " ")
		}
		if _, err := fmt.Fprintln(out, ans); err != nil {
			return err
		}
	}
	return sc.Err()
}

// writeJSONLine writes v as one line.
func writeJSONLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// procStatus returns a field of /proc/PID/status in KiB (VmRSS, VmHWM...).
func procStatus(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(v)
			if len(f) == 0 {
				break
			}
			return strconv.ParseInt(f[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no %s", pid, field)
}

// rssKiB is the resident set size of pid.
func rssKiB(pid int) (int64, error) { return procStatus(pid, "VmRSS") }

// userHZ is the unit of /proc/PID/stat times (USER_HZ, 100 on Linux).
const userHZ = 100

// cpuTime is the user plus system CPU time pid has used.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces; fields count from after ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return time.Duration(ut+st) * time.Second / userHZ, nil
}

// usage is what a process has used so far: CPU time split into user and
// system, and its read and write system calls (syscr, syscw of
// /proc/PID/io: read(2), write(2) and their relatives, sockets included).
//
// user and sys come in clock ticks (10 ms), too coarse for a short FETCH;
// cpu is the sum of every thread's time on a CPU from schedstat, in
// nanoseconds. Reports take the total from cpu and split it by the ticks.
type usage struct {
	user, sys    time.Duration
	cpu          time.Duration
	syscr, syscw int64
}

func (u usage) sub(v usage) usage {
	return usage{u.user - v.user, u.sys - v.sys, u.cpu - v.cpu, u.syscr - v.syscr, u.syscw - v.syscw}
}

func (u usage) add(v usage) usage {
	return usage{u.user + v.user, u.sys + v.sys, u.cpu + v.cpu, u.syscr + v.syscr, u.syscw + v.syscw}
}

// split returns the precise CPU time divided into user and system time in
// the proportion of the ticks.
func (u usage) split() (total, user, sys time.Duration) {
	total = u.cpu
	if total <= 0 {
		total = u.user + u.sys
	}
	if u.user+u.sys <= 0 {
		return total, 0, 0
	}
	user = time.Duration(float64(total) * float64(u.user) / float64(u.user+u.sys))
	return total, user, total - user
}

// threadsCPU sums the time on a CPU of pid's threads (the first field of
// /proc/PID/task/TID/schedstat, in nanoseconds).
func threadsCPU(pid int) time.Duration {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var sum int64
	for _, ent := range ents {
		b, err := os.ReadFile(dir + "/" + ent.Name() + "/schedstat")
		if err != nil {
			continue
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(f[0], 10, 64)
		sum += n
	}
	return time.Duration(sum)
}

// procUsage reads pid's usage from /proc/PID/stat and /proc/PID/io.
func procUsage(pid int) (usage, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return usage{}, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return usage{}, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return usage{}, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return usage{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	u := usage{user: time.Duration(ut) * time.Second / userHZ, sys: time.Duration(st) * time.Second / userHZ, cpu: threadsCPU(pid)}
	io, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return usage{}, err
	}
	for _, line := range strings.Split(string(io), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		switch k {
		case "syscr":
			u.syscr = n
		case "syscw":
			u.syscw = n
		}
	}
	return u, nil
}

// readBytes is the number of bytes pid has read with read(2) and friends
// (rchar), sockets included.
func readBytes(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "rchar:"); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/io: no rchar", pid)
}

// selfCPU is this process's user plus system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
