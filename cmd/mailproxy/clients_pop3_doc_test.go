package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The POP3 blocks of docs/CLIENTS.md: fetchmail and getmail6 run as for
// IMAP (their runners fetch the INBOX and compare it with the seed), mpop
// has its own.
func init() {
	clientRunners["fetchmail-pop3"] = runFetchmailDoc
	clientRunners["getmail-pop3"] = runGetmailDoc
	clientRunners["mpop"] = runMpopDoc
}

func runMpopDoc(t *testing.T, r *clientRun) {
	rc := filepath.Join(r.home, ".mpoprc")
	writeClientFile(t, rc, r.text)
	maildir := makeClientMaildir(t, r)
	runClient(t, r, "", "mpop", "--file="+rc, "work")
	fetched := readFiles(t, filepath.Join(maildir, "new"))
	wantSeedFetched(t, "mpop", strings.Join(fetched, "\n"), len(fetched))
}

// makeClientMaildir makes ~/Maildir with cur, new and tmp.
func makeClientMaildir(t *testing.T, r *clientRun) string {
	t.Helper()
	maildir := filepath.Join(r.home, "Maildir")
	for _, sub := range []string{"cur", "new", "tmp"} {
		if err := os.MkdirAll(filepath.Join(maildir, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	return maildir
}
