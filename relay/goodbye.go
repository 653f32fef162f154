package relay

import (
	"sync"
	"time"
)

// A Goodbye lets another goroutine end a relayed session with a last line
// to the client, such as "* BYE server shutting down\r\n", without cutting
// into a response the upstream is sending: the line goes out where
// RelayOptions.SafePoint says the upstream's stream may be interrupted
// (without one, after the chunk being relayed).
//
// The zero value is ready to use; give each one to one relay only
// (RelayOptions.Goodbye).
type Goodbye struct {
	mu   sync.Mutex    // protects line, r
	line []byte        // what to write; nil until Say
	r    *relaySession // the relay, while it runs
}

// Say asks the relay to write line to the client as soon as the upstream's
// stream may be interrupted (at once if it may now), then to close the
// upstream connection and end the client's stream, and to return
// ErrSaidGoodbye. Only the first call counts; Say does not wait. Called
// before the relay starts, it takes effect when it does; after it ended,
// it does nothing. A relay whose SafePoint never says yes, or whose client
// does not read the line, goes on until the caller closes its
// connections (a shutdown deadline).
func (g *Goodbye) Say(line string) {
	g.mu.Lock()
	if g.line != nil {
		g.mu.Unlock()
		return
	}
	g.line = []byte(line)
	r := g.r
	g.mu.Unlock()
	if r != nil {
		r.byeAsked.Store(true)
		// The upstream direction may be blocked in Read: wake it. It
		// checks byeAsked after setting any read deadline of its own
		// and before each Read, so this wake-up cannot be lost.
		r.conns[1].SetReadDeadline(time.Now().Add(pokeDeadline))
		r.closeAfterUpstreamEOF()
	}
}

// closeAfterUpstreamEOF closes the client connection when a goodbye was
// asked for and the upstream has ended its stream: the client has had the
// upstream's last word and its end of stream, and the only thing left is
// to wait for it to hang up. Say and the upstream direction's finish both
// call it, so that it happens whichever comes second.
func (r *relaySession) closeAfterUpstreamEOF() {
	r.mu.Lock()
	done := r.eof[1] && !r.aborted
	if done {
		r.closedBy[0] = true
	}
	r.mu.Unlock()
	if done {
		r.conns[0].Close()
	}
}

func (g *Goodbye) text() []byte {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.line
}

// A SafePoint follows a relayed conversation for a Goodbye and says where
// the stream to the client may be interrupted: the one hook through which
// a protocol tells the relay where its messages end (front/imap's tracks
// IMAP literals and COMPRESS). The relay calls it only with a Goodbye.
//
// FromUpstream and Safe are called by the upstream direction's goroutine,
// FromClient by the client direction's: an implementation that relates
// the two synchronises itself. None of them may block or keep b.
type SafePoint interface {
	// FromUpstream is given the upstream's bytes in order, each run just
	// before the relay writes it to the client.
	FromUpstream(b []byte)
	// FromClient is given the client's bytes in order, each run just
	// before the relay writes it to the upstream.
	FromClient(b []byte)
	// Safe reports whether a goodbye line written to the client now, after
	// the bytes given to FromUpstream so far, would fall between two of
	// the upstream's messages.
	Safe() bool
}

// A Streamer is a SafePoint that also knows when the upstream is in the
// middle of a message whose end is still to come (an IMAP literal): the
// relay then goes on reading records that arrive one by one, for up to
// streamHold, instead of writing each to the client as it comes, so that
// one write carries up to 64 KiB. Nothing that ends a message waits: a
// lone line, or the last part of a literal, goes out as soon as it is at
// hand, and a Pending that is wrong (text that only looked like a literal
// announcement) costs at most streamHold.
type Streamer interface {
	SafePoint
	// Pending is the number of bytes the upstream must still send before
	// the current message can end (0: it may end now), after the bytes
	// given to FromUpstream so far.
	Pending() int64
}
