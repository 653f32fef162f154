package fake365

import (
	"context"
	"net"
	"net/http"
	"sync"
)

// httpServer runs an http.Server on its listener until stopped: the
// plumbing the IdP and Graph share.
type httpServer struct {
	srv    *http.Server
	served chan struct{} // closed when Serve returns
	once   sync.Once
}

func startHTTP(ln net.Listener, srv *http.Server) *httpServer {
	s := &httpServer{srv: srv, served: make(chan struct{})}
	go func() {
		defer close(s.served)
		srv.Serve(ln)
	}()
	return s
}

// stop runs before (if not nil), then shuts the server down, giving
// requests in flight idpCloseTimeout to end before closing what is left,
// and waits for Serve to return. Only the first call does anything.
func (s *httpServer) stop(before func()) {
	s.once.Do(func() {
		if before != nil {
			before()
		}
		ctx, cancel := context.WithTimeout(context.Background(), idpCloseTimeout)
		defer cancel()
		if err := s.srv.Shutdown(ctx); err != nil {
			s.srv.Close()
		}
		<-s.served
	})
}
