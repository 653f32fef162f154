package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"testing"

	"mailproxy/graph"
	"mailproxy/internal/fake365"
	"mailproxy/oauth"
)

// The Graph bench runs the fake Entra ID and the fake Graph in a child
// process (this test binary again, with graphChildEnv set), so that the
// benchmark process's memory is the Graph path's alone.
const graphChildEnv = "MAILPROXY_BENCH_GRAPH_CHILD"

const (
	graphBenchClient = "bench-graph-client"
	graphBenchUser   = "scanner@contoso.com"
)

func init() {
	if os.Getenv(graphChildEnv) == "" {
		return
	}
	if err := runGraphChild(); err != nil {
		fmt.Fprintln(os.Stderr, "graph child:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

type graphChildInfo struct {
	TokenURL, GraphURL, RefreshToken string
}

var graphBenchScopes = []string{
	"https://outlook.office.com/SMTP.Send", "offline_access",
	"https://graph.microsoft.com/Mail.Send", "https://graph.microsoft.com/Mail.ReadWrite",
}

func runGraphChild() error {
	idp, err := fake365.NewIdP()
	if err != nil {
		return err
	}
	defer idp.Close()
	idp.AddClient(fake365.Client{ID: graphBenchClient})
	idp.AddUser(graphBenchUser)
	g, err := fake365.NewGraph(idp)
	if err != nil {
		return err
	}
	defer g.Close()
	g.DigestOnly(true)
	_, tokenURL, _ := idp.Endpoints("organizations")
	info := graphChildInfo{TokenURL: tokenURL, GraphURL: g.URL, RefreshToken: idp.GrantRefreshToken(graphBenchClient, graphBenchUser, graphBenchScopes)}
	if err := json.NewEncoder(os.Stdout).Encode(info); err != nil {
		return err
	}
	io.Copy(io.Discard, os.Stdin) // until the parent closes it
	return nil
}

// writeBenchMessage writes a message of about size bytes: a text part and
// three PDF-like attachments in base64, as a scanner sends them.
func writeBenchMessage(w io.Writer, size int) {
	bw := bufio.NewWriterSize(w, 256<<10)
	fmt.Fprintf(bw, "From: <%s>\r\nTo: <bob@fabrikam.com>\r\nSubject: scan\r\nMIME-Version: 1.0\r\n"+
		"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nThree scans.\r\n", graphBenchUser)
	per := size / 3 / 78 * 57 // base64 lines of 76 + CRLF carry 57 bytes
	rnd := rand.NewChaCha8([32]byte{1})
	raw := make([]byte, 57)
	line := make([]byte, 76)
	for i := range 3 {
		fmt.Fprintf(bw, "--b1\r\nContent-Type: application/pdf; name=\"scan%d.pdf\"\r\nContent-Disposition: attachment; filename=\"scan%d.pdf\"\r\n"+
			"Content-Transfer-Encoding: base64\r\n\r\n", i, i)
		for n := 0; n < per; n += 57 {
			rnd.Read(raw)
			base64.StdEncoding.Encode(line, raw)
			bw.Write(line)
			bw.WriteString("\r\n")
		}
	}
	bw.WriteString("--b1--\r\n")
	bw.Flush()
}

// BenchmarkGraphSend30MB sends a 30 MB message through the Graph path: the
// spool file, the MIME walk that takes the attachments out, the draft, three
// upload sessions and the send, against the fake Graph in another process.
// It reports the throughput (MB/s of MIME) and the benchmark process's
// peak RSS during the runs (peak-RSS-MiB): it must not grow with the
// message.
func BenchmarkGraphSend30MB(b *testing.B) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), graphChildEnv+"=1")
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	var info graphChildInfo
	if err := json.NewDecoder(stdout).Decode(&info); err != nil {
		b.Fatalf("graph child: %v", err)
	}

	p := &oauth.Provider{Name: "bench", ClientID: graphBenchClient, TokenURL: info.TokenURL, Scopes: graphBenchScopes,
		GraphScopes: graphBenchScopes[2:], HTTPClient: &http.Client{}}
	src := oauth.NewSource(p, oauth.TokenSet{RefreshToken: info.RefreshToken}, nil, nil)
	sender := graph.NewSender(graphBenchUser, src.Graph(), graph.Options{BaseURL: info.GraphURL, KeepSentItems: true, TempDir: b.TempDir()})

	f, err := os.CreateTemp(b.TempDir(), "msg-*.eml")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	writeBenchMessage(f, 30<<20)
	size, _ := f.Seek(0, io.SeekEnd)
	b.SetBytes(size)

	send := func() {
		s := sender.NewSession(context.Background())
		s.Mail(graphBenchUser, nil)
		s.Rcpt("bob@fabrikam.com", nil)
		if _, err := s.Data(io.NewSectionReader(f, 0, size)); err != nil {
			b.Fatalf("Data = %v", err)
		}
	}
	send()                                                // warm up: token, connections
	os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) // reset VmHWM to the current RSS
	base, _ := procStatus(os.Getpid(), "VmRSS")           // kB
	b.ResetTimer()
	for b.Loop() {
		send()
	}
	b.StopTimer()
	peak, _ := procStatus(os.Getpid(), "VmHWM")
	b.ReportMetric(float64(peak)/1024, "peak-RSS-MiB")
	b.ReportMetric(float64(peak-base)/1024, "RSS-growth-MiB")
	b.ReportMetric(float64(size)/(1<<20), "message-MiB")
}
