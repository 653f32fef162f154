package pop3

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
)

// testMessages are the messages the client tests seed: dot lines (the
// stuffing must be undone exactly), a lone "." line, 8-bit text, a long
// line, an empty body, many lines.
func testMessages() [][]byte {
	var many bytes.Buffer
	many.WriteString("Subject: many lines\r\nFrom: a@example.com\r\n\r\n")
	for i := range 5000 {
		fmt.Fprintf(&many, "line %d %s\r\n", i, strings.Repeat("x", i%70))
	}
	return [][]byte{
		[]byte("Subject: plain\r\nFrom: a@example.com\r\nTo: alice@example.com\r\n\r\nHello.\r\n"),
		[]byte("Subject: dots\r\n\r\n.starts with a dot\r\n..two dots\r\n.\r\n. \r\nend\r\n"),
		[]byte("Subject: =?utf-8?q?8bit?=\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße, ½ € ✓\r\n"),
		[]byte("Subject: long line\r\n\r\n" + strings.Repeat("0123456789", 200) + "\r\n"),
		[]byte("Subject: empty body\r\n\r\n"),
		many.Bytes(),
	}
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func need(t *testing.T, prog string) string {
	t.Helper()
	p, err := exec.LookPath(prog)
	if err != nil {
		t.Skipf("%s not installed (.ci/run installs it): %v", prog, err)
	}
	return p
}

func run(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*testTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %q: %v\n%s", name, args, err, out)
	}
	return string(out)
}

func hostPort(t *testing.T, addr string) (string, string) {
	t.Helper()
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return h, p
}

// poplibScript fetches every message with Python's poplib and prints JSON:
// the UIDL list and the sha256 of each message as RETR returned it
// (poplib undoes the dot-stuffing; lines are joined with CRLF again). With
// "dele N" it deletes message N before QUIT.
const poplibScript = `
import hashlib, json, poplib, sys
host, port, user, pw = sys.argv[1:5]
dele = int(sys.argv[5]) if len(sys.argv) > 5 else 0
poplib._MAXLINE = 1 << 20
p = poplib.POP3(host, int(port), timeout=60)
p.user(user)
p.pass_(pw)
count, size = p.stat()
uidl = [l.decode().split()[1] for l in p.uidl()[1]]
shas = []
for i in range(1, count + 1):
    resp, lines, octets = p.retr(i)
    shas.append(hashlib.sha256(b"".join(l + b"\r\n" for l in lines)).hexdigest())
if dele:
    p.dele(dele)
p.quit()
print(json.dumps({"count": count, "size": size, "uidl": uidl, "sha": shas}))
`

type poplibResult struct {
	Count int      `json:"count"`
	Size  int64    `json:"size"`
	UIDL  []string `json:"uidl"`
	SHA   []string `json:"sha"`
}

func poplibFetch(t *testing.T, addr, user, pass string, dele int) poplibResult {
	t.Helper()
	py := need(t, "python3")
	h, p := hostPort(t, addr)
	args := []string{"-c", poplibScript, h, p, user, pass}
	if dele > 0 {
		args = append(args, fmt.Sprint(dele))
	}
	out := run(t, t.TempDir(), nil, py, args...)
	var r poplibResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("poplib output %q: %v", out, err)
	}
	return r
}

func TestPoplib(t *testing.T) {
	e := newEnv(t)
	msgs := testMessages()
	e.seed(alice, msgs...)
	var wantSHA []string
	var size int64
	for _, m := range msgs {
		wantSHA = append(wantSHA, sha(m))
		size += int64(len(m))
	}
	r1 := poplibFetch(t, e.addr, alice, alicePass, 0)
	if r1.Count != len(msgs) || r1.Size != size || !slices.Equal(r1.SHA, wantSHA) {
		t.Fatalf("poplib = %d messages, %d bytes, sha %v; want %d, %d, %v", r1.Count, r1.Size, r1.SHA, len(msgs), size, wantSHA)
	}
	r2 := poplibFetch(t, e.addr, alice, alicePass, 1)
	if !slices.Equal(r1.UIDL, r2.UIDL) {
		t.Errorf("UIDL changed between sessions: %v then %v", r1.UIDL, r2.UIDL)
	}
	r3 := poplibFetch(t, e.addr, alice, alicePass, 0)
	if !slices.Equal(r3.UIDL, r1.UIDL[1:]) || !slices.Equal(r3.SHA, wantSHA[1:]) {
		t.Errorf("after DELE 1 and QUIT: UIDL %v sha %v, want %v %v", r3.UIDL, r3.SHA, r1.UIDL[1:], wantSHA[1:])
	}
}

func TestPoplibLargeMessage(t *testing.T) {
	if testing.Short() {
		t.Skip("30 MB message: skipped with -short")
	}
	e := newEnv(t)
	var b bytes.Buffer
	b.WriteString("Subject: big\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n")
	line := []byte(strings.Repeat("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0", 2) + "\r\n")
	for b.Len() < 30<<20 {
		b.Write(line)
		if b.Len()%(1<<20) < len(line) {
			b.WriteString(".dot line now and then\r\n")
		}
	}
	msg := b.Bytes()
	e.seed(alice, msg)
	r := poplibFetch(t, e.addr, alice, alicePass, 0)
	if r.Count != 1 || r.Size != int64(len(msg)) || len(r.SHA) != 1 || r.SHA[0] != sha(msg) {
		t.Errorf("poplib on a %d-byte message = %d messages, size %d, sha %v; want 1, %d, %s", len(msg), r.Count, r.Size, r.SHA, len(msg), sha(msg))
	}
}

// lf is what mail delivery tools write: LF line endings.
func lf(b []byte) []byte { return bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n")) }

// stripHeader removes every header field named name (and its folded
// continuation lines) from an LF message.
func stripHeader(msg []byte, name string) []byte {
	head, body, _ := bytes.Cut(msg, []byte("\n\n"))
	var out [][]byte
	skip := false
	for _, l := range bytes.Split(head, []byte("\n")) {
		if len(l) > 0 && (l[0] == ' ' || l[0] == '\t') {
			if !skip {
				out = append(out, l)
			}
			continue
		}
		skip = len(l) > len(name) && strings.EqualFold(string(l[:len(name)+1]), name+":")
		if !skip {
			out = append(out, l)
		}
	}
	return append(append(bytes.Join(out, []byte("\n")), "\n\n"...), body...)
}

// maildirMessages returns the messages in dir/new and dir/cur, sorted by
// file name, each with the headers named in strip removed.
func maildirMessages(t *testing.T, dir string, strip ...string) [][]byte {
	t.Helper()
	var names []string
	for _, sub := range []string{"new", "cur"} {
		ents, err := os.ReadDir(filepath.Join(dir, sub))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			names = append(names, filepath.Join(dir, sub, e.Name()))
		}
	}
	sort.Strings(names)
	var out [][]byte
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range strip {
			b = stripHeader(b, h)
		}
		out = append(out, b)
	}
	return out
}

func makeMaildir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "Maildir")
	for _, sub := range []string{"new", "cur", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// sameSet compares the fetched messages with the seeded ones (as LF text)
// regardless of delivery order.
func sameSet(t *testing.T, client string, got [][]byte, want [][]byte) {
	t.Helper()
	g := make([]string, len(got))
	for i, m := range got {
		g[i] = sha(m)
	}
	w := make([]string, len(want))
	for i, m := range want {
		w[i] = sha(lf(m))
	}
	sort.Strings(g)
	sort.Strings(w)
	if !slices.Equal(g, w) {
		for i, m := range got {
			t.Logf("%s message %d: %.300q", client, i, m)
		}
		t.Errorf("%s fetched %d messages with sha256 %v, want %d: %v", client, len(got), g, len(want), w)
	}
}

func TestFetchmail(t *testing.T) {
	fm := need(t, "fetchmail")
	e := newEnv(t)
	msgs := testMessages()
	e.seed(alice, msgs...)
	home := t.TempDir()
	out := filepath.Join(home, "out")
	if err := os.Mkdir(out, 0o700); err != nil {
		t.Fatal(err)
	}
	h, p := hostPort(t, e.addr)
	rc := filepath.Join(home, "fetchmailrc")
	conf := fmt.Sprintf(`set no bouncemail
poll %s service %s protocol pop3 uidl auth password timeout 60
  user %q there with password %q is localuser here
  sslproto '' no sslcertck
  keep fetchall no rewrite
  mda "/bin/sh -c 'cat > %s/$(date +%%s%%N)'"
`, h, p, alice, alicePass, out)
	if err := os.WriteFile(rc, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"HOME=" + home, "FETCHMAILHOME=" + home}
	// Our own pid file: as root fetchmail otherwise uses
	// /var/run/fetchmail.pid and refuses to run beside another test's.
	run(t, home, env, fm, "-f", rc, "--pidfile", filepath.Join(home, "fetchmail.pid"), "--nodetach", "--nosyslog", "-v")
	ents, err := os.ReadDir(out)
	if err != nil {
		t.Fatal(err)
	}
	var got [][]byte
	for _, en := range ents {
		b, err := os.ReadFile(filepath.Join(out, en.Name()))
		if err != nil {
			t.Fatal(err)
		}
		// fetchmail adds a Received field of its own at the top.
		got = append(got, stripHeader(b, "Received"))
	}
	sameSet(t, "fetchmail", got, msgs)
}

func TestGetmail(t *testing.T) {
	gm := need(t, "getmail")
	e := newEnv(t)
	msgs := testMessages()
	e.seed(alice, msgs...)
	md := makeMaildir(t)
	gdir := t.TempDir()
	h, p := hostPort(t, e.addr)
	// getmail refuses to deliver as root; it switches to the destination's
	// user, which then needs to reach the Maildir.
	asUser := ""
	if os.Geteuid() == 0 {
		asUser = "user = nobody"
		for d := md; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
			os.Chmod(d, 0o755)
		}
		for _, sub := range []string{"", "new", "cur", "tmp"} {
			os.Chmod(filepath.Join(md, sub), 0o777)
		}
	}
	conf := fmt.Sprintf(`[retriever]
type = SimplePOP3Retriever
server = %s
port = %s
username = %s
password = %s

[destination]
type = Maildir
path = %s/
%s

[options]
verbose = 0
read_all = true
delete = false
delivered_to = false
received = false
message_log_syslog = false
`, h, p, alice, alicePass, md, asUser)
	rc := filepath.Join(gdir, "getmailrc")
	if err := os.WriteFile(rc, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, gdir, []string{"HOME=" + gdir}, gm, "--rcfile="+rc, "--getmaildir="+gdir)
	// getmail writes a Return-Path from the (unknown) envelope sender.
	sameSet(t, "getmail", maildirMessages(t, md, "Return-Path"), msgs)
}

func TestMpop(t *testing.T) {
	mp := need(t, "mpop")
	e := newEnv(t)
	msgs := testMessages()
	e.seed(alice, msgs...)
	h, p := hostPort(t, e.addr)
	for _, auth := range []string{"user", "plain"} {
		t.Run(auth, func(t *testing.T) {
			md := makeMaildir(t)
			home := t.TempDir()
			run(t, home, []string{"HOME=" + home}, mp,
				"--host="+h, "--port="+p, "--user="+alice, "--passwordeval=echo "+alicePass,
				"--tls=off", "--auth="+auth, "--keep=on", "--only-new=off", "--received-header=off",
				"--uidls-file="+filepath.Join(home, "uidls"), "--delivery=maildir,"+md)
			sameSet(t, "mpop --auth="+auth, maildirMessages(t, md), msgs)
		})
	}
}

// TestCurl is the command the demo prints.
func TestCurl(t *testing.T) {
	curl := need(t, "curl")
	e := newEnv(t)
	msgs := testMessages()
	e.seed(alice, msgs...)
	out := run(t, t.TempDir(), nil, curl, "-sS", "--max-time", "60", "-u", alice+":"+alicePass,
		"pop3://"+e.addr+"/2")
	if out != string(msgs[1]) {
		t.Errorf("curl RETR 2 = %q, want %q", out, msgs[1])
	}
	list := run(t, t.TempDir(), nil, curl, "-sS", "--max-time", "60", "-u", alice+":"+alicePass, "pop3://"+e.addr+"/")
	if n := strings.Count(list, "\n"); n != len(msgs) {
		t.Errorf("curl LIST = %q, want %d lines", list, len(msgs))
	}
}
