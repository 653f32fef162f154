package daemon

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"mailproxy/config"
	"mailproxy/internal/fake365"
	"mailproxy/oauth"
)

func TestGraphSendersSendAndFollowReload(t *testing.T) {
	idp, err := fake365.NewIdP()
	if err != nil {
		t.Fatal(err)
	}
	defer idp.Close()
	idp.AddClient(fake365.Client{ID: "c"})
	idp.AddUser("a@contoso.com")
	g, err := fake365.NewGraph(idp)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	_, tokenURL, _ := idp.Endpoints("contoso.onmicrosoft.com")

	text := `[[provider]]
name = "contoso"
type = "custom"
client_id = "c"
auth_url = "` + tokenURL + `"
token_url = "` + tokenURL + `"
scopes = ["https://outlook.office.com/SMTP.Send", "offline_access"]
imap_server = "127.0.0.1:1"
smtp_server = "127.0.0.1:1"
send_via = "graph"
graph_url = "` + g.URL + `"
[[account]]
username = "a@contoso.com"
`
	cfg, err := config.Parse([]byte("state_dir = \"/nonexistent\"\n"+text), "")
	if err != nil {
		t.Fatal(err)
	}
	a := cfg.Accounts[0]
	p := OAuthProvider(a.Provider)
	p.HTTPClient = &http.Client{}
	rt := idp.GrantRefreshToken("c", a.Username, p.Scopes)
	src := oauth.NewSource(p, oauth.TokenSet{RefreshToken: rt}, nil, nil)

	gs := newGraphSenders(slog.New(slog.DiscardHandler))
	send := func() error {
		s, err := gs.session(context.Background(), a, src)
		if err != nil {
			return err
		}
		s.Mail(a.Username, nil)
		s.Rcpt("bob@fabrikam.com", nil)
		_, err = s.Data(strings.NewReader("From: a@contoso.com\r\nTo: bob@fabrikam.com\r\nSubject: hi\r\n\r\nhello\r\n"))
		return err
	}
	if err := send(); err != nil {
		t.Fatalf("send through Graph = %v", err)
	}
	first := gs.senders["a@contoso.com"]
	if err := send(); err != nil {
		t.Fatal(err)
	}
	if gs.senders["a@contoso.com"] != first {
		t.Errorf("a second session made a new sender; want the account's one")
	}
	if n := len(g.Sent()); n != 2 {
		t.Fatalf("Graph sent %d messages, want 2", n)
	}
	cfg2, err := config.Parse([]byte("state_dir = \"/nonexistent\"\n"+text), "")
	if err != nil {
		t.Fatal(err)
	}
	gs.forget(cfg2)
	if len(gs.senders) != 0 {
		t.Errorf("after a reload the old account's sender is kept")
	}
	if _, err := gs.session(context.Background(), a, struct{ io.Reader }{}); err == nil {
		t.Errorf("session with a token source without Graph() = nil error")
	}
}
