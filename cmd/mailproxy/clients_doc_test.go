package main

// The client configs in docs/CLIENTS.md are tests: every block marked
//
//	<!-- client-config NAME: tested with CLIENT VERSION ... -->
//
// is taken from the file as written, gets the demo's ports, username and
// password, and is run with Debian's real client (isync, msmtp, fetchmail,
// getmail6, NeoMutt, swaks) against the in-process demo: fetched mail is
// compared with what the fake Exchange holds, sent mail with what the fake
// Exchange accepted. A client that is not installed skips with a message;
// CI installs them all (.ci/run).

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"mailproxy/internal/fake365"
)

// clientConfig is one marked block of docs/CLIENTS.md.
type clientConfig struct {
	name string // after "client-config"
	note string // "tested with ..."
	line int    // of the marker, 1-based
	lang string
	text string
}

var clientMarker = regexp.MustCompile(`^<!-- client-config ([a-z0-9-]+): (.*) -->$`)

// clientConfigs returns the marked blocks of CLIENTS.md and complains about
// a marker that is not followed by a block, and about an unmarked block
// that is neither mailproxy's own config (toml) nor a shell example.
func clientConfigs(t *testing.T) []clientConfig {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "docs", "CLIENTS.md"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	var out []clientConfig
	var pending *clientConfig
	for i := 0; i < len(lines); i++ {
		l := strings.TrimSpace(lines[i])
		if m := clientMarker.FindStringSubmatch(l); m != nil {
			pending = &clientConfig{name: m[1], note: m[2], line: i + 1}
			continue
		}
		if !strings.HasPrefix(l, "```") {
			if l != "" && pending != nil {
				t.Errorf("CLIENTS.md:%d: marker %q is not followed by a ``` block", pending.line, pending.name)
				pending = nil
			}
			continue
		}
		lang := strings.TrimPrefix(l, "```")
		start := i
		var body []string
		for i++; i < len(lines) && !strings.HasPrefix(strings.TrimSpace(lines[i]), "```"); i++ {
			body = append(body, lines[i])
		}
		if pending == nil {
			if lang != "toml" && lang != "sh" {
				t.Errorf("CLIENTS.md:%d: a client config block without a <!-- client-config NAME: tested with ... --> marker", start+1)
			}
			continue
		}
		pending.lang = lang
		pending.text = strings.Join(body, "\n") + "\n"
		out = append(out, *pending)
		pending = nil
	}
	return out
}

// clientRun is what a client test gets: the demo, a home directory and the
// block with the demo's values put in.
type clientRun struct {
	dm         *demo
	home       string
	text       string
	imap, smtp string // ports
	pop3       string // port
}

// clientRunners run one block each. Every marked block needs one, and
// every runner a block.
var clientRunners = map[string]func(t *testing.T, r *clientRun){
	"mbsync":    runMbsyncDoc,
	"msmtp":     runMsmtpDoc,
	"fetchmail": runFetchmailDoc,
	"getmail":   runGetmailDoc,
	"neomutt":   runNeomuttDoc,
	"swaks":     runSwaksDoc,
}

func TestClientConfigsAreMarked(t *testing.T) {
	blocks := clientConfigs(t)
	seen := map[string]bool{}
	for _, b := range blocks {
		if !strings.HasPrefix(b.note, "tested with ") {
			t.Errorf("CLIENTS.md:%d: marker note %q does not say \"tested with CLIENT VERSION\"", b.line, b.note)
		}
		if clientRunners[b.name] == nil {
			t.Errorf("CLIENTS.md:%d: no test runs client-config %q", b.line, b.name)
		}
		if seen[b.name] {
			t.Errorf("CLIENTS.md:%d: client-config %q appears twice", b.line, b.name)
		}
		seen[b.name] = true
	}
	for name := range clientRunners {
		if !seen[name] {
			t.Errorf("CLIENTS.md has no client-config %q block", name)
		}
	}
}

func TestClientConfigExtraction(t *testing.T) {
	// The extraction must see a block that was edited into the doc: a
	// broken marker or a missing runner has to fail the test above.
	blocks := clientConfigs(t)
	if len(blocks) < len(clientRunners) {
		t.Fatalf("clientConfigs() found %d blocks, want at least %d", len(blocks), len(clientRunners))
	}
	for _, b := range blocks {
		if !strings.Contains(b.text, "alice@contoso.com") {
			t.Errorf("CLIENTS.md:%d: block %q does not name alice@contoso.com, so the test cannot put the demo user in", b.line, b.name)
		}
	}
}

func TestClientConfigs(t *testing.T) {
	for _, b := range clientConfigs(t) {
		run := clientRunners[b.name]
		if run == nil {
			continue // reported by TestClientConfigsAreMarked
		}
		t.Run(b.name, func(t *testing.T) {
			bin := map[string]string{"mbsync": "mbsync", "msmtp": "msmtp", "fetchmail": "fetchmail",
				"getmail": "getmail", "neomutt": "neomutt", "swaks": "swaks",
				"fetchmail-pop3": "fetchmail", "getmail-pop3": "getmail", "mpop": "mpop"}[b.name]
			if _, err := exec.LookPath(bin); err != nil {
				t.Skipf("%s not installed (Debian package %s; .ci/run installs it): %v", bin, debPackage(b.name), err)
			}
			dm := startTestDemo(t)
			_, imapPort, _ := net.SplitHostPort(dm.d.Addr("imap").String())
			_, smtpPort, _ := net.SplitHostPort(dm.d.Addr("smtp").String())
			_, pop3Port, _ := net.SplitHostPort(dm.d.Addr("pop3").String())
			home := t.TempDir()
			r := &clientRun{dm: dm, home: home, imap: imapPort, smtp: smtpPort, pop3: pop3Port,
				text: demoValues(b.text, imapPort, smtpPort, pop3Port)}
			t.Logf("CLIENTS.md:%d (%s), as run:\n%s", b.line, b.note, r.text)
			run(t, r)
		})
	}
}

func debPackage(name string) string {
	switch name {
	case "mbsync":
		return "isync"
	case "getmail", "getmail-pop3":
		return "getmail6"
	case "fetchmail-pop3":
		return "fetchmail"
	}
	return name
}

// demoValues puts the demo's ports, user and password into a block written
// for alice@contoso.com on the default ports.
func demoValues(text, imapPort, smtpPort, pop3Port string) string {
	return strings.NewReplacer(
		":1110", ":"+pop3Port,
		" 1110", " "+pop3Port,
		":1143", ":"+imapPort,
		" 1143", " "+imapPort,
		":1587", ":"+smtpPort,
		" 1587", " "+smtpPort,
		"alice@contoso.com", demoUser,
		"alice%40contoso.com", strings.ReplaceAll(demoUser, "@", "%40"),
		"local-password", demoPassword,
		`"pass show mailproxy/alice"`, `"echo `+demoPassword+`"`,
		`("pass", "show", "mailproxy/alice")`, `("echo", "`+demoPassword+`")`,
	).Replace(text)
}

// runClient runs a client with HOME set to the test's home and a deadline;
// it fails the test with the client's output when the client fails.
func runClient(t *testing.T, r *clientRun, stdin string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = r.home
	cmd.Env = append(os.Environ(), "HOME="+r.home, "TERM=xterm", "LC_ALL=C.UTF-8")
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

func writeClientFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// wantSeedFetched checks that every message the demo seeded into the INBOX
// is in fetched, body included, and that the client stored n messages.
func wantSeedFetched(t *testing.T, client, fetched string, n int) {
	t.Helper()
	seed := demoMessages(demoUser)
	if n != len(seed) {
		t.Errorf("%s fetched %d messages, want %d", client, n, len(seed))
	}
	all := strings.ReplaceAll(fetched, "\r\n", "\n")
	for _, m := range seed {
		text := string(m)
		_, body, _ := strings.Cut(text, "\r\n\r\n")
		id := regexp.MustCompile(`Message-ID: <[^>]+>`).FindString(text)
		for _, want := range []string{id, strings.ReplaceAll(body, "\r\n", "\n")} {
			if !strings.Contains(all, want) {
				t.Errorf("%s's fetched mail lacks %q", client, want)
			}
		}
	}
}

// wantSent checks that the fake Exchange accepted one message from the demo
// user whose text holds every one of want.
func wantSent(t *testing.T, r *clientRun, client string, want ...string) {
	t.Helper()
	msgs := r.dm.smtpUp.Messages()
	for _, m := range msgs {
		text := strings.ReplaceAll(string(m.Data), "\r\n", "\n")
		ok := m.From == demoUser && len(m.Rcpts) == 1 && m.Rcpts[0].Addr == demoUser
		for _, w := range want {
			ok = ok && strings.Contains(text, w)
		}
		if ok {
			return
		}
	}
	var got []string
	for _, m := range msgs {
		got = append(got, fmt.Sprintf("MAIL FROM %s RCPT %v: %q", m.From, m.Rcpts, m.Data))
	}
	t.Errorf("%s: upstream accepted %d messages %v, want one from %s to %s holding %q", client, len(msgs), got, demoUser, demoUser, want)
}

// readFiles returns the contents of the regular files directly in dir.
func readFiles(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(b))
	}
	return out
}

func runMbsyncDoc(t *testing.T, r *clientRun) {
	rc := filepath.Join(r.home, ".mbsyncrc")
	writeClientFile(t, rc, r.text)
	if err := os.MkdirAll(filepath.Join(r.home, "Mail", "work"), 0o700); err != nil {
		t.Fatal(err)
	}
	runClient(t, r, "", "mbsync", "-c", rc, "-a")
	inbox := filepath.Join(r.home, "Mail", "work", "INBOX")
	fetched := append(readFiles(t, filepath.Join(inbox, "new")), readFiles(t, filepath.Join(inbox, "cur"))...)
	wantSeedFetched(t, "mbsync", strings.Join(fetched, "\n"), len(fetched))
	// Patterns * syncs every folder: Exchange's standard ones must be there
	// for clients set up per CLIENTS.md (NeoMutt's record and postponed).
	for _, f := range fake365.StandardFolders {
		if _, err := os.Stat(filepath.Join(r.home, "Mail", "work", f.Name)); err != nil {
			t.Errorf("mbsync did not create the folder %q: %v", f.Name, err)
		}
	}
}

func runMsmtpDoc(t *testing.T, r *clientRun) {
	rc := filepath.Join(r.home, ".msmtprc")
	writeClientFile(t, rc, r.text)
	msg := "Subject: msmtp through mailproxy\n\nhello from msmtp\n"
	runClient(t, r, msg, "msmtp", "-C", rc, "-a", "work", demoUser)
	wantSent(t, r, "msmtp", "Subject: msmtp through mailproxy", "hello from msmtp")
	log, err := os.ReadFile(filepath.Join(r.home, ".msmtp.log"))
	if err != nil || !strings.Contains(string(log), "smtpstatus=250") {
		t.Errorf("msmtp log = %q, %v; want a line with smtpstatus=250", log, err)
	}
}

func runFetchmailDoc(t *testing.T, r *clientRun) {
	rc := filepath.Join(r.home, ".fetchmailrc")
	writeClientFile(t, rc, r.text)
	mbox := filepath.Join(r.home, "fetched.mbox")
	// -d0: one poll, not a daemon; --mda: deliver to a file, not to port 25.
	// Each message starts with fetchmail's own Received line.
	// --pidfile: as root fetchmail otherwise uses /var/run/fetchmail.pid
	// and refuses to run beside another test's fetchmail.
	runClient(t, r, "", "fetchmail", "-d0", "-f", rc, "--pidfile", filepath.Join(r.home, "fetchmail.pid"), "--mda", "cat >> "+mbox)
	b, err := os.ReadFile(mbox)
	if err != nil {
		t.Fatalf("fetchmail delivered nothing: %v", err)
	}
	wantSeedFetched(t, "fetchmail", string(b), strings.Count(string(b), "Message-ID: "))
}

func runGetmailDoc(t *testing.T, r *clientRun) {
	dir := filepath.Join(r.home, ".getmail")
	maildir := filepath.Join(r.home, "Maildir")
	for _, sub := range []string{"cur", "new", "tmp"} {
		if err := os.MkdirAll(filepath.Join(maildir, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	text := r.text
	if os.Geteuid() == 0 {
		// getmail refuses to deliver as root (CLIENTS.md says so): deliver
		// as nobody, who needs to reach the Maildir.
		text = strings.Replace(text, "path = ~/Maildir/\n", "path = ~/Maildir/\nuser = nobody\n", 1)
		nobody, err := exec.Command("id", "-u", "nobody").Output()
		if err != nil {
			t.Skipf("running as root and there is no user nobody to deliver as: %v", err)
		}
		uid := strings.TrimSpace(string(nobody))
		for _, p := range []string{filepath.Dir(r.home), r.home} {
			os.Chmod(p, 0o755)
		}
		if out, err := exec.Command("chown", "-R", uid, maildir).CombinedOutput(); err != nil {
			t.Fatalf("chown %s: %v %s", maildir, err, out)
		}
	}
	writeClientFile(t, filepath.Join(dir, "getmailrc"), text)
	runClient(t, r, "", "getmail", "--getmaildir", dir, "--rcfile", "getmailrc")
	fetched := readFiles(t, filepath.Join(maildir, "new"))
	wantSeedFetched(t, "getmail", strings.Join(fetched, "\n"), len(fetched))
}

func runNeomuttDoc(t *testing.T, r *clientRun) {
	rc := filepath.Join(r.home, ".neomuttrc")
	writeClientFile(t, rc, r.text)

	// Sending: batch mode (stdin is not a terminal) sends over smtp_url.
	runClient(t, r, "hello from neomutt\n", "neomutt", "-n", "-F", rc, "-s", "neomutt through mailproxy", demoUser)
	wantSent(t, r, "neomutt", "Subject: neomutt through mailproxy", "hello from neomutt")

	// Reading needs a terminal: script(1) gives it one. NeoMutt opens the
	// spoolfile over IMAP, copies every message to an mbox file and quits.
	if _, err := exec.LookPath("script"); err != nil {
		t.Skipf("script (util-linux) not installed, so NeoMutt cannot be given a terminal to read with: %v", err)
	}
	out := filepath.Join(r.home, "copied.mbox")
	push := `push "<tag-pattern>~A<enter><tag-prefix><copy-message>` + out + `<enter><quit>"`
	cmdline := fmt.Sprintf("neomutt -n -F %s -e 'set mbox_type=mbox confirmcreate=no quit=yes' -e '%s'", rc, push)
	screen := runClient(t, r, "", "script", "-qec", cmdline, "/dev/null")
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("neomutt copied nothing: %v\nscreen: %q", err, screen)
	}
	// The INBOX holds the seed and the message sent above.
	// mbox: every message starts with a "From " line; one is the message
	// sent above.
	wantSeedFetched(t, "neomutt", string(b), strings.Count("\n"+string(b), "\nFrom ")-1)
	if !strings.Contains(string(b), "hello from neomutt") {
		t.Errorf("neomutt's copy lacks the message it sent")
	}
	if strings.Contains(screen, "NONEXISTENT") {
		t.Errorf("neomutt showed a NONEXISTENT folder: %q", screen)
	}
}

func runSwaksDoc(t *testing.T, r *clientRun) {
	out := runClient(t, r, "", "sh", "-c", r.text)
	wantSent(t, r, "swaks", "Subject: test through mailproxy", "hello from swaks")
	if !regexp.MustCompile(`<~  250 2\.0\.0 OK <[^>]+> Queued|<-  250 2\.0\.0 OK <[^>]+> Queued`).MatchString(out) {
		t.Errorf("swaks output lacks the upstream's 250 with its queue id:\n%s", out)
	}
}
