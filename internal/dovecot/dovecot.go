// Package dovecot starts a private Dovecot 2.3 for tests and the bench: a
// real IMAP and POP3 server on 127.0.0.1 whose oauth2 passdb checks bearer
// tokens at fake365's token introspection endpoint (RFC 7662), so that
// XOAUTH2 logins with tokens from the fake Entra ID work as they do at
// Exchange Online. The fakes are ours and will always differ from real
// servers somewhere (Dovecot writes 4 KiB TLS records, for one); this is
// the real thing, next to them.
//
// Each Server has its own configuration, base_dir, state and Maildirs in a
// directory of the caller's, listens only on loopback ports chosen free
// here, runs in the foreground (dovecot -F) as a child process of ours and
// is killed at Close. The system service, its configuration and its
// sockets are never touched.
package dovecot

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Timeouts, in one place.
const (
	// startTimeout bounds waiting for the first real greeting: the master
	// starts the auth process and the login services.
	startTimeout = 20 * time.Second
	// readyPoll is how often Start tries the IMAP port while Dovecot
	// starts; Dovecot says nowhere else when it is ready.
	readyPoll = 20 * time.Millisecond
	// stopTimeout bounds waiting for the master to exit after SIGTERM.
	stopTimeout = 10 * time.Second
	// bindAttempts is how often Start picks new ports when Dovecot could
	// not bind the ones it was given (another process took one meanwhile).
	bindAttempts = 5
)

// Binary is the dovecot executable Start runs.
const Binary = "/usr/sbin/dovecot"

// Available reports why Dovecot cannot be used here (nil when it can): the
// binary or the IMAP and POP3 services are not installed.
func Available() error {
	path, err := exec.LookPath("dovecot")
	if err != nil {
		path = Binary
	}
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("dovecot is not installed (Debian: apt-get install dovecot-imapd dovecot-pop3d): %w", err)
	}
	for _, svc := range []string{"imap", "imap-login", "pop3", "pop3-login"} {
		p := filepath.Join(libexecDir, svc)
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("dovecot's %s service is not installed (Debian: dovecot-imapd, dovecot-pop3d): %w", svc, err)
		}
	}
	return nil
}

// libexecDir holds Dovecot's service binaries on Debian.
const libexecDir = "/usr/lib/dovecot"

// Config is what a Server is started with.
type Config struct {
	// Dir is where the configuration, the runtime directory, the state
	// and the Maildirs go; it must exist and belong to this test alone
	// (t.TempDir()).
	Dir string
	// IntrospectionURL is the RFC 7662 endpoint the oauth2 passdb posts
	// tokens to (fake365's IdP.IntrospectionURL). Its answer's "username"
	// must be the SASL user, as the mailbox's owner at Exchange Online.
	IntrospectionURL string
	// CertPEM and KeyPEM are the server certificate (for 127.0.0.1) and
	// its key, fake365.CA.LeafPEM.
	CertPEM, KeyPEM []byte
}

// Server is a running Dovecot.
type Server struct {
	// IMAPS and POP3S are the implicit TLS listeners, host:port on
	// 127.0.0.1.
	IMAPS, POP3S string

	dir     string
	mailDir string
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
	mailUID int // -1: files stay ours
	mailGID int
	seq     atomic.Int64
}

// instances numbers the Servers of this process, for their instance_name.
var instances atomic.Int64

// Start writes the configuration and starts Dovecot, and returns once it
// answers on its IMAP port with a real greeting.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	if cfg.Dir == "" || cfg.IntrospectionURL == "" || len(cfg.CertPEM) == 0 || len(cfg.KeyPEM) == 0 {
		return nil, errors.New("dovecot: Config needs Dir, IntrospectionURL, CertPEM and KeyPEM")
	}
	ids, err := runAs()
	if err != nil {
		return nil, err
	}
	s := &Server{
		dir:     cfg.Dir,
		mailDir: filepath.Join(cfg.Dir, "mail"),
		logPath: filepath.Join(cfg.Dir, "dovecot.log"),
		mailUID: -1,
		mailGID: -1,
	}
	if ids.root {
		s.mailUID, s.mailGID = ids.mailUID, ids.mailGID
		// The mail processes run as ids.mail and must reach the Maildirs.
		if err := openPath(cfg.Dir); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(s.mailDir, 0o700); err != nil {
		return nil, fmt.Errorf("dovecot: %w", err)
	}
	if err := s.chown(s.mailDir); err != nil {
		return nil, err
	}
	files := map[string][]byte{
		"cert.pem":        cfg.CertPEM,
		"key.pem":         cfg.KeyPEM,
		"oauth2.conf.ext": []byte(oauth2Conf(cfg.IntrospectionURL)),
		"dovecot.log":     nil,
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(cfg.Dir, name), b, 0o600); err != nil {
			return nil, fmt.Errorf("dovecot: write %s: %w", name, err)
		}
	}
	name := fmt.Sprintf("mailproxy-test-%d-%d", os.Getpid(), instances.Add(1))
	var lastErr error
	for range bindAttempts {
		ports, err := freePorts(2)
		if err != nil {
			return nil, err
		}
		conf := mainConf(cfg.Dir, name, ids, ports[0], ports[1])
		if err := os.WriteFile(filepath.Join(cfg.Dir, "dovecot.conf"), []byte(conf), 0o600); err != nil {
			return nil, fmt.Errorf("dovecot: write dovecot.conf: %w", err)
		}
		s.IMAPS = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
		s.POP3S = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1]))
		lastErr = s.start(ctx)
		if lastErr == nil {
			return s, nil
		}
		if !strings.Contains(lastErr.Error(), "in use") {
			break
		}
	}
	return nil, lastErr
}

// start runs the master and waits until the IMAP port greets properly.
func (s *Server) start(ctx context.Context) error {
	os.Truncate(s.logPath, 0)
	cmd := exec.Command(Binary, "-F", "-c", filepath.Join(s.dir, "dovecot.conf"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// Its own process group, so that Close reaches the services too if
	// the master dies first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("dovecot: start %s: %w", Binary, err)
	}
	s.cmd = cmd
	s.exited = make(chan struct{})
	go func() {
		s.waitErr = cmd.Wait()
		close(s.exited)
	}()
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	t := time.NewTicker(readyPoll)
	defer t.Stop()
	for {
		if s.greets(ctx) {
			return nil
		}
		select {
		case <-s.exited:
			return fmt.Errorf("dovecot: exited during start (%v): %s%s", s.waitErr, out.String(), s.Log())
		case <-ctx.Done():
			s.Close()
			return fmt.Errorf("dovecot: no IMAP greeting on %s within %s: %s", s.IMAPS, startTimeout, s.Log())
		case <-t.C:
		}
	}
}

// greets reports whether the IMAP port answers with Dovecot's greeting,
// not the "Waiting for authentication process" it sends while its auth
// process starts.
func (s *Server) greets(ctx context.Context) bool {
	d := net.Dialer{Timeout: time.Second}
	c, err := d.DialContext(ctx, "tcp", s.IMAPS)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	// Readiness only: the certificate is the caller's own.
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
	line, err := bufio.NewReader(tc).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "* OK") && strings.Contains(line, "ready")
}

// Log returns what Dovecot logged so far, for failure messages. It holds
// no secrets: Dovecot logs neither tokens nor passwords at this level.
func (s *Server) Log() string {
	b, _ := os.ReadFile(s.logPath)
	return string(b)
}

// Close stops Dovecot and its services.
func (s *Server) Close() error {
	if s.cmd == nil || s.cmd.Process == nil {
		return nil
	}
	pid := s.cmd.Process.Pid
	select {
	case <-s.exited:
	default:
		syscall.Kill(pid, syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(stopTimeout):
			s.cmd.Process.Kill()
			<-s.exited
		}
	}
	// Services the master did not take down with it.
	syscall.Kill(-pid, syscall.SIGKILL)
	return nil
}

// Deliver puts msg into user's INBOX (Maildir new/), as the LDA would.
// Sessions see it at their next SELECT, NOOP or IDLE poll.
func (s *Server) Deliver(user string, msg []byte) error {
	box := filepath.Join(s.mailDir, user)
	for _, d := range []string{box, filepath.Join(box, "tmp"), filepath.Join(box, "new"), filepath.Join(box, "cur")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("dovecot: deliver to %s: %w", user, err)
		}
		if err := s.chown(d); err != nil {
			return err
		}
	}
	base := fmt.Sprintf("%d.M%dP%d.mailproxy-test", time.Now().Unix(), s.seq.Add(1), os.Getpid())
	tmp := filepath.Join(box, "tmp", base)
	if err := os.WriteFile(tmp, msg, 0o600); err != nil {
		return fmt.Errorf("dovecot: deliver to %s: %w", user, err)
	}
	if err := s.chown(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(box, "new", base)); err != nil {
		return fmt.Errorf("dovecot: deliver to %s: %w", user, err)
	}
	return nil
}

func (s *Server) chown(path string) error {
	if s.mailUID < 0 {
		return nil
	}
	if err := os.Chown(path, s.mailUID, s.mailGID); err != nil {
		return fmt.Errorf("dovecot: %w", err)
	}
	return nil
}

// identities are the users Dovecot's processes run as.
type identities struct {
	root             bool
	internal, login  string // default_internal_user, default_login_user
	mail             string // the mail processes (userdb uid)
	mailUID, mailGID int
}

// runAs picks the users. Dovecot refuses to run its login processes as
// root and to give mail access to uid 0; as root (CI) they run as
// Debian's dovecot and dovenull users; otherwise everything runs as the
// current user, which Dovecot allows.
func runAs() (identities, error) {
	if os.Geteuid() != 0 {
		u, err := user.Current()
		if err != nil {
			return identities{}, fmt.Errorf("dovecot: current user: %w", err)
		}
		return identities{internal: u.Username, login: u.Username, mail: u.Username, mailUID: -1, mailGID: -1}, nil
	}
	ids := identities{root: true, internal: "dovecot", login: "dovenull", mail: "dovecot"}
	for _, name := range []string{"dovecot", "dovenull"} {
		if _, err := user.Lookup(name); err != nil {
			return identities{}, fmt.Errorf("dovecot: running as root needs the %s user (Debian's dovecot-core creates it): %w", name, err)
		}
	}
	u, _ := user.Lookup(ids.mail)
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err := errors.Join(err1, err2); err != nil {
		return identities{}, fmt.Errorf("dovecot: user %s: %w", ids.mail, err)
	}
	ids.mailUID, ids.mailGID = uid, gid
	return ids, nil
}

// openPath lets other users traverse dir and its parents up to the
// temporary directory (t.TempDir() makes them 0700), so that the mail
// processes reach the Maildirs; nothing in them becomes readable.
func openPath(dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("dovecot: %w", err)
	}
	top := filepath.Clean(os.TempDir())
	if !strings.HasPrefix(dir, top+string(filepath.Separator)) {
		return fmt.Errorf("dovecot: as root, Dir must be under %s (t.TempDir()), so that the mail user can reach it; got %s", top, dir)
	}
	for d := dir; d != top; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("dovecot: %w", err)
		}
		if m := fi.Mode().Perm(); m&0o011 != 0o011 {
			if err := os.Chmod(d, m|0o011); err != nil {
				return fmt.Errorf("dovecot: %w", err)
			}
		}
	}
	return nil
}

// freePorts returns n ports on 127.0.0.1 that were free a moment ago:
// Dovecot takes fixed port numbers, not 0, so Start picks them by binding
// port 0 and closing, and retries when Dovecot finds one taken meanwhile.
func freePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("dovecot: pick a free port: %w", err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// oauth2Conf is the oauth2 passdb's configuration: every token is posted
// to the introspection endpoint (no local JWT validation), and its
// "username" must equal the SASL user.
func oauth2Conf(introspectionURL string) string {
	return "introspection_mode = post\n" +
		"introspection_url = " + introspectionURL + "\n" +
		"username_attribute = username\n" +
		"active_attribute = active\n" +
		"active_value = true\n"
}

// mainConf is dovecot.conf. Nothing is included from /etc/dovecot.
func mainConf(dir, instance string, ids identities, imaps, pop3s int) string {
	q := func(p string) string { return filepath.Join(dir, p) }
	return fmt.Sprintf(`# Written by mailproxy's internal/dovecot for one test; not the system's.
base_dir = %[1]s
state_dir = %[2]s
instance_name = %[3]s
listen = 127.0.0.1
protocols = imap pop3
log_path = %[4]s
auth_verbose = yes
ssl = required
ssl_cert = <%[5]s
ssl_key = <%[6]s
ssl_min_protocol = TLSv1.2
auth_mechanisms = xoauth2 oauthbearer
default_internal_user = %[7]s
default_internal_group = %[7]s
default_login_user = %[8]s
first_valid_uid = 1
mail_location = maildir:%[9]s/%%u
mail_max_userip_connections = 1000
passdb {
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = %[10]s
}
userdb {
  driver = static
  args = uid=%[11]s gid=%[11]s home=%[9]s/%%u
}
%[12]s%[13]s`, q("run"), q("state"), instance, q("dovecot.log"), q("cert.pem"), q("key.pem"),
		ids.internal, ids.login, q("mail"), q("oauth2.conf.ext"), ids.mail, loginService("imap", imaps), loginService("pop3", pop3s))
}

// loginService is the login service of protocol: its plain-text listener
// off, its implicit TLS one on port.
func loginService(protocol string, port int) string {
	return fmt.Sprintf(`service %[1]s-login {
  inet_listener %[1]s {
    port = 0
  }
  inet_listener %[1]ss {
    port = %[2]d
    ssl = yes
  }
}
`, protocol, port)
}
