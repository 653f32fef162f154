package graph

import (
	"bufio"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime/quotedprintable"
	"os"
	"strings"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"
	"github.com/emersion/go-smtp"
)

// spoolFile is a message on disk, private to this process.
type spoolFile struct {
	f    *os.File
	size int64
}

// spoolMessage copies r into a new temporary file of at most limit bytes. Past the
// limit it reads r to its end (so the SMTP exchange stays in step) and
// returns errTooLarge. A failing r (the client's data broke off) yields an
// error wrapping errClientData, or r's own *smtp.SMTPError; a failing disk
// one wrapping errLocalStorage. Nothing is sent in either case.
func spoolMessage(dir string, r io.Reader, limit int64) (*spoolFile, error) {
	f, err := os.CreateTemp(dir, "mailproxy-graph-*.eml") // mode 0600
	if err != nil {
		return nil, fmt.Errorf("spool the message: %w: %w", errLocalStorage, err)
	}
	src := &errReader{r: r}
	n, err := io.Copy(f, io.LimitReader(src, limit+1))
	if err == nil && n > limit {
		_, err = io.Copy(io.Discard, src)
		if err == nil {
			err = errTooLarge
		}
	}
	if err != nil {
		removeTemp(f)
		switch {
		case errors.Is(err, errTooLarge):
			return nil, err
		case src.err != nil:
			var se *smtp.SMTPError
			if errors.As(src.err, &se) {
				return nil, se
			}
			return nil, fmt.Errorf("read the message: %w: %w", errClientData, src.err)
		}
		return nil, fmt.Errorf("spool the message: %w: %w", errLocalStorage, err)
	}
	return &spoolFile{f: f, size: n}, nil
}

// errReader remembers the error of its reader.
type errReader struct {
	r   io.Reader
	err error
}

func (e *errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF {
		e.err = err
	}
	return n, err
}

func removeTemp(f *os.File) {
	f.Close()
	os.Remove(f.Name())
}

func (s *spoolFile) Close() { removeTemp(s.f) }

// reader returns a reader of the whole file from its start.
func (s *spoolFile) reader() io.Reader { return io.NewSectionReader(s.f, 0, s.size) }

// headerInfo is what the top-level header says about recipients.
type headerInfo struct {
	to, cc, bcc []*mail.Address
}

func readHeaderInfo(r io.Reader) (headerInfo, error) {
	h, err := textproto.ReadHeader(bufio.NewReader(r))
	if err != nil {
		return headerInfo{}, fmt.Errorf("read the message header: %w", err)
	}
	mh := mail.Header{Header: message.Header{Header: h}}
	var hi headerInfo
	// A header that does not parse names nobody: the envelope decides.
	hi.to, _ = mh.AddressList("To")
	hi.cc, _ = mh.AddressList("Cc")
	hi.bcc, _ = mh.AddressList("Bcc")
	return hi, nil
}

// b64Len is the length of the base64 (padded, no line breaks) of n bytes.
func b64Len(n int64) int64 { return (n + 2) / 3 * 4 }

// b64Reader streams the standard base64 of src without line breaks.
type b64Reader struct {
	src io.Reader
	in  [48 << 10]byte // a multiple of 3, so that only the end is padded
	out [64 << 10]byte
	buf []byte
	eof bool
}

func newB64Reader(src io.Reader) *b64Reader { return &b64Reader{src: src} }

func (b *b64Reader) Read(p []byte) (int, error) {
	for len(b.buf) == 0 {
		if b.eof {
			return 0, io.EOF
		}
		n, err := io.ReadFull(b.src, b.in[:])
		switch err {
		case nil:
		case io.EOF, io.ErrUnexpectedEOF:
			b.eof = true
		default:
			return 0, err
		}
		base64.StdEncoding.Encode(b.out[:], b.in[:n])
		b.buf = b.out[:base64.StdEncoding.EncodedLen(n)]
	}
	n := copy(p, b.buf)
	b.buf = b.buf[n:]
	return n, nil
}

// ---- splitting a large message ----

// leaf is one non-multipart entity of the message, by its position in a
// depth-first walk.
type leaf struct {
	index       int
	header      textproto.Header
	attachment  bool  // looks like an attachment (filename, disposition, non-text)
	encodedSize int64 // body bytes as in the message
	decodedSize int64 // after the transfer encoding
	remove      bool
	// filled by the writing pass for removed leaves:
	file *os.File
}

func (l *leaf) name() string {
	ah := mail.AttachmentHeader{Header: message.Header{Header: l.header}}
	if n, err := ah.Filename(); err == nil && n != "" {
		return n
	}
	if _, params, err := ah.ContentType(); err == nil && params["name"] != "" {
		return params["name"]
	}
	return fmt.Sprintf("attachment-%d", l.index)
}

func (l *leaf) contentType() string {
	h := message.Header{Header: l.header}
	t, _, err := h.ContentType()
	if err != nil || t == "" {
		return "application/octet-stream"
	}
	return t
}

func (l *leaf) inline() bool {
	h := message.Header{Header: l.header}
	d, _, _ := h.ContentDisposition()
	return strings.EqualFold(d, "inline")
}

func (l *leaf) contentID() string {
	return strings.Trim(strings.TrimSpace(l.header.Get("Content-Id")), "<>")
}

// isAttachment decides whether a leaf may leave the MIME and be added as a
// file attachment: anything with a file name or an attachment disposition,
// and any non-text body (images, PDFs, nested messages).
func isAttachment(h textproto.Header) bool {
	mh := message.Header{Header: h}
	disp, params, _ := mh.ContentDisposition()
	if strings.EqualFold(disp, "attachment") || params["filename"] != "" {
		return true
	}
	t, tparams, _ := mh.ContentType()
	if tparams["name"] != "" {
		return true
	}
	return t != "" && !strings.HasPrefix(t, "text/") && !strings.HasPrefix(t, "multipart/")
}

// decoder undoes a part's Content-Transfer-Encoding.
func decoder(h textproto.Header, r io.Reader) io.Reader {
	switch strings.ToLower(strings.TrimSpace(h.Get("Content-Transfer-Encoding"))) {
	case "base64":
		return &b64Decoder{src: r}
	case "quoted-printable":
		return quotedprintable.NewReader(r)
	}
	return r
}

// b64Alphabet marks the bytes of the standard base64 alphabet and '='.
var b64Alphabet = func() (t [256]bool) {
	for _, c := range []byte("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") {
		t[c] = true
	}
	return t
}()

// b64Decoder decodes a MIME base64 body a chunk at a time, skipping what
// is not base64 (line breaks, stray spaces), as RFC 2045 6.8 asks.
type b64Decoder struct {
	src io.Reader
	in  [64 << 10]byte
	n   int // alphabet bytes waiting in in
	out [48 << 10]byte
	buf []byte
	err error
}

func (d *b64Decoder) Read(p []byte) (int, error) {
	for len(d.buf) == 0 {
		if d.err != nil {
			return 0, d.err
		}
		m, err := d.src.Read(d.in[d.n:])
		kept := d.n
		for _, c := range d.in[d.n : d.n+m] {
			if b64Alphabet[c] {
				d.in[kept] = c
				kept++
			}
		}
		d.n = kept
		usable := d.n / 4 * 4
		if err != nil {
			usable = d.n
		}
		if usable > 0 {
			chunk := d.in[:usable]
			enc := base64.StdEncoding
			if usable%4 != 0 { // the last quantum without its padding
				chunk = []byte(strings.TrimRight(string(chunk), "="))
				enc = base64.RawStdEncoding
			}
			k, derr := enc.Decode(d.out[:], chunk)
			d.buf = d.out[:k]
			d.n = copy(d.in[:], d.in[usable:d.n])
			if derr != nil {
				d.err = fmt.Errorf("base64: %w", derr)
			}
		}
		if err != nil && d.err == nil {
			d.err = err
		}
	}
	n := copy(p, d.buf)
	d.buf = d.buf[n:]
	return n, nil
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// walk visits every leaf of the message read from r depth-first. For a
// multipart entity it calls enter before its parts and leave after; for a
// leaf it calls visit with the leaf's header and raw body.
type walker struct {
	enter func(h textproto.Header, boundary string) error
	leave func() error
	visit func(index int, h textproto.Header, body io.Reader) error
	n     int
}

func (w *walker) walk(r io.Reader) error {
	br := bufio.NewReaderSize(r, 64<<10)
	h, err := textproto.ReadHeader(br)
	if err != nil {
		return fmt.Errorf("read the message header: %w", err)
	}
	return w.entity(h, br, true)
}

func (w *walker) entity(h textproto.Header, body io.Reader, top bool) error {
	mh := message.Header{Header: h}
	t, params, _ := mh.ContentType()
	if strings.HasPrefix(t, "multipart/") && params["boundary"] != "" {
		if w.enter != nil {
			if err := w.enter(h, params["boundary"]); err != nil {
				return err
			}
		}
		mr := textproto.NewMultipartReader(body, params["boundary"])
		for {
			p, err := mr.NextPart()
			if err == io.EOF {
				break
			}
			if err != nil {
				return fmt.Errorf("read a MIME part: %w", err)
			}
			if err := w.entity(p.Header, p, false); err != nil {
				return err
			}
		}
		if w.leave != nil {
			return w.leave()
		}
		return nil
	}
	i := w.n
	w.n++
	return w.visit(i, h, body)
}

// scan measures every leaf of the message.
func scan(r io.Reader) ([]*leaf, error) {
	var leaves []*leaf
	w := &walker{visit: func(i int, h textproto.Header, body io.Reader) error {
		l := &leaf{index: i, header: h, attachment: isAttachment(h)}
		cr := &countReader{r: body}
		var cw countWriter
		if _, err := io.Copy(&cw, decoder(h, cr)); err != nil {
			return fmt.Errorf("decode MIME part %d: %w", i, err)
		}
		io.Copy(io.Discard, cr) // what the decoder left (padding, epilogue)
		l.encodedSize, l.decodedSize = cr.n, cw.n
		leaves = append(leaves, l)
		return nil
	}}
	if err := w.walk(r); err != nil {
		return nil, err
	}
	return leaves, nil
}

// choose marks the leaves to take out of the MIME: every attachment over
// attachmentThreshold, then more attachments, largest first, until the
// rest fits in one request. It reports whether the rest fits.
func choose(leaves []*leaf, total int64) bool {
	rest := total
	for _, l := range leaves {
		if l.attachment && l.decodedSize > attachmentThreshold {
			l.remove = true
			rest -= l.encodedSize
		}
	}
	for b64Len(rest) > maxRequestBody {
		var big *leaf
		for _, l := range leaves {
			if l.attachment && !l.remove && l.decodedSize > 0 && (big == nil || l.encodedSize > big.encodedSize) {
				big = l
			}
		}
		if big == nil {
			return false
		}
		big.remove = true
		rest -= big.encodedSize
	}
	return true
}

// rewrite writes the message without the removed leaves to out, and the
// decoded body of each removed leaf to a temporary file of its own.
func rewrite(r io.Reader, leaves []*leaf, out io.Writer, dir string) error {
	type level struct {
		mw    *textproto.MultipartWriter
		parts int
	}
	var stack []*level
	// open starts a part with header h: in the enclosing multipart, or as
	// the message's own header at the top.
	open := func(h textproto.Header) (io.Writer, error) {
		if len(stack) == 0 {
			return out, textproto.WriteHeader(out, h)
		}
		top := stack[len(stack)-1]
		pw, err := top.mw.CreatePart(h)
		if err != nil {
			return nil, err
		}
		top.parts++
		return pw, nil
	}
	w := &walker{}
	w.enter = func(h textproto.Header, boundary string) error {
		dst, err := open(h)
		if err != nil {
			return err
		}
		mw := textproto.NewMultipartWriter(dst)
		if err := mw.SetBoundary(boundary); err != nil {
			return err
		}
		stack = append(stack, &level{mw: mw})
		return nil
	}
	w.leave = func() error {
		top := stack[len(stack)-1]
		if top.parts == 0 {
			// Every part left: keep the multipart valid.
			var h textproto.Header
			h.Set("Content-Type", "text/plain; charset=utf-8")
			if _, err := top.mw.CreatePart(h); err != nil {
				return err
			}
		}
		stack = stack[:len(stack)-1]
		return top.mw.Close()
	}
	w.visit = func(i int, h textproto.Header, body io.Reader) error {
		l := leaves[i]
		if l.remove {
			f, err := os.CreateTemp(dir, "mailproxy-graph-att-*")
			if err != nil {
				return fmt.Errorf("spool an attachment: %w", err)
			}
			l.file = f
			if _, err := io.Copy(f, decoder(h, body)); err != nil {
				return fmt.Errorf("spool an attachment: %w", err)
			}
			io.Copy(io.Discard, body)
			if len(stack) == 0 {
				// The message itself is the attachment: leave an empty text body.
				nh := h.Copy()
				for _, k := range []string{"Content-Type", "Content-Transfer-Encoding", "Content-Disposition", "Content-Id"} {
					nh.Del(k)
				}
				nh.Set("Content-Type", "text/plain; charset=utf-8")
				return textproto.WriteHeader(out, nh)
			}
			return nil
		}
		dst, err := open(h)
		if err != nil {
			return err
		}
		_, err = io.Copy(dst, body)
		return err
	}
	return w.walk(r)
}
