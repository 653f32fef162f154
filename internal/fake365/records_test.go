package fake365

import (
	"bytes"
	"crypto/tls"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// recordSpy sits under a TLS client and notes the length of every
// application data record the server sends, from the record headers on
// the wire.
type recordSpy struct {
	net.Conn

	mu      sync.Mutex // protects the fields below
	pending []byte     // bytes of a record header not complete yet
	skip    int        // body bytes of the current record still to come
	lens    []int      // ciphertext lengths of application data records
}

func (s *recordSpy) Read(b []byte) (int, error) {
	n, err := s.Conn.Read(b)
	s.mu.Lock()
	defer s.mu.Unlock()
	for p := b[:n]; len(p) > 0; {
		if s.skip > 0 {
			k := min(s.skip, len(p))
			s.skip -= k
			p = p[k:]
			continue
		}
		k := min(5-len(s.pending), len(p))
		s.pending = append(s.pending, p[:k]...)
		p = p[k:]
		if len(s.pending) == 5 {
			size := int(s.pending[3])<<8 | int(s.pending[4])
			if s.pending[0] == 23 {
				s.lens = append(s.lens, size)
			}
			s.skip, s.pending = size, s.pending[:0]
		}
	}
	return n, err
}

// plaintexts returns the plaintext sizes of the application data records
// seen so far.
func (s *recordSpy) plaintexts(version uint16) []int {
	overhead := 17 // TLS 1.3 AEAD: the inner content type and a 16-byte tag
	if version != tls.VersionTLS13 {
		overhead = 24 // TLS 1.2 AES-GCM: an 8-byte explicit nonce and the tag
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]int, len(s.lens))
	for i, l := range s.lens {
		out[i] = l - overhead
	}
	return out
}

func TestIMAPUpstreamRecordSize(t *testing.T) {
	const msgSize = 200 << 10
	msg := []byte("Subject: records\r\n\r\n" + strings.Repeat("x", msgSize-22) + "\r\n")
	for _, tc := range []struct {
		set  int // SetRecordSize
		want int // the size of full records
		// min is the fewest full records the message must arrive in.
		min int
	}{
		{2048, 2048, msgSize/2048 - 1},
		{4096, 4096, msgSize/4096 - 1},
		// Dynamic record sizing off: full records from the first byte,
		// not only after 128 KiB.
		{16384, 16384, msgSize/16384 - 1},
	} {
		e := newIMAPEnv(t)
		e.up.AddMailbox("alice@contoso.com")
		if err := e.up.Append("alice@contoso.com", "INBOX", msg); err != nil {
			t.Fatalf("Append() error = %v", err)
		}
		e.up.SetRecordSize(tc.set)
		raw, err := net.Dial("tcp", e.up.Addr)
		if err != nil {
			t.Fatal(err)
		}
		raw.SetDeadline(time.Now().Add(20 * time.Second))
		spy := &recordSpy{Conn: raw}
		cfg := e.clientTLS.Clone()
		cfg.ServerName = "127.0.0.1"
		tconn := tls.Client(spy, cfg)
		c := imapclient.New(tconn, nil)
		t.Cleanup(func() { c.Close() })
		if err := c.Authenticate(upXOAuth2{"alice@contoso.com", e.v.issue("alice@contoso.com", time.Hour)}); err != nil {
			t.Fatalf("Authenticate() error = %v", err)
		}
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			t.Fatalf("Select() error = %v", err)
		}
		body := &imap.FetchItemBodySection{}
		msgs, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{body}}).Collect()
		if err != nil || len(msgs) != 1 {
			t.Fatalf("Fetch(1 BODY[]) = %d messages, %v; want 1", len(msgs), err)
		}
		if got := msgs[0].FindBodySection(body); !bytes.Equal(got, msg) {
			t.Fatalf("SetRecordSize(%d): Fetch(1 BODY[]) returned %d bytes, want the %d appended", tc.set, len(got), len(msg))
		}
		sizes := spy.plaintexts(tconn.ConnectionState().Version)
		largest, full := 0, 0
		for _, n := range sizes {
			largest = max(largest, n)
			if n == tc.want {
				full++
			}
		}
		if largest != tc.want || full < tc.min {
			t.Errorf("SetRecordSize(%d): largest record %d bytes, %d records of %d; want largest %d and at least %d full",
				tc.set, largest, full, tc.want, tc.want, tc.min)
		}
	}
}
