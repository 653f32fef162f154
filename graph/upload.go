package graph

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// upload adds a removed attachment through an upload session: ranges of
// uploadChunk bytes PUT to the session's pre-authenticated URL (no
// Authorization header, as Graph asks). After a failed range it asks the
// session where to go on (nextExpectedRanges) and resumes there.
func (s *Sender) upload(ctx context.Context, th *throttle, msgURL string, l *leaf, size int64) error {
	item := map[string]any{
		"attachmentType": "file",
		"name":           l.name(),
		"size":           size,
		"contentType":    l.contentType(),
		"isInline":       l.inline(),
	}
	if id := l.contentID(); id != "" {
		item["contentId"] = id
	}
	b, err := jsonBody(map[string]any{"AttachmentItem": item})
	if err != nil {
		return err
	}
	var sess struct {
		UploadURL string `json:"uploadUrl"`
	}
	if _, err := s.do(ctx, th, call{op: "create upload session", method: http.MethodPost, url: msgURL + "/attachments/createUploadSession", body: b, auth: true}, &sess); err != nil {
		return err
	}
	if sess.UploadURL == "" {
		return errors.New("graph create upload session: the answer has no uploadUrl")
	}
	var next int64
	failures := 0
	for next < size {
		end := min(next+uploadChunk, size) - 1
		start := next
		rng := fmt.Sprintf("bytes %d-%d/%d", start, end, size)
		c := call{
			op: "upload attachment", method: http.MethodPut, url: sess.UploadURL, timeout: chunkTimeout,
			body: body{
				open:  func() io.Reader { return io.NewSectionReader(l.file, start, end-start+1) },
				size:  end - start + 1,
				ctype: "application/octet-stream",
			},
		}
		c.hdr = http.Header{"Content-Range": {rng}}
		status, err := s.do(ctx, th, c, nil)
		if err == nil {
			if status == http.StatusCreated || end+1 == size {
				return nil
			}
			next = end + 1
			failures = 0
			continue
		}
		var ge *Error
		if errors.As(err, &ge) && ge.Status != http.StatusRequestedRangeNotSatisfiable && ge.Status < 500 {
			return err // the session refuses the attachment: no point resuming
		}
		failures++
		if failures >= maxChunkAttempts {
			return err
		}
		// Where does the session want to go on?
		n, serr := s.nextExpected(ctx, th, sess.UploadURL)
		if serr != nil {
			return errors.Join(err, serr)
		}
		next = n
	}
	return nil
}

func (s *Sender) nextExpected(ctx context.Context, th *throttle, uploadURL string) (int64, error) {
	var st struct {
		NextExpectedRanges []string `json:"nextExpectedRanges"`
	}
	if _, err := s.do(ctx, th, call{op: "upload status", method: http.MethodGet, url: uploadURL, retryTransport: true}, &st); err != nil {
		return 0, err
	}
	if len(st.NextExpectedRanges) == 0 {
		return 0, errors.New("graph upload status: no nextExpectedRanges")
	}
	first, _, _ := strings.Cut(st.NextExpectedRanges[0], "-")
	n, err := strconv.ParseInt(first, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("graph upload status: bad range %q", st.NextExpectedRanges[0])
	}
	return n, nil
}
