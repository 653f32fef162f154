package main

// The documentation is tested like code, so that it cannot drift from it:
//
//   - every mailproxy command line in a shell block of README.md and
//     docs/*.md must parse against the real command set; the ones that can
//     run offline (version, hash-password, status, check, demo) run for
//     real, status and check against the in-process demo;
//   - every config key the docs name exists in config.example.toml, and
//     every key there is one the config parser knows;
//   - relative links and their #anchors resolve;
//   - the replies TROUBLESHOOTING.md quotes as mailproxy's own are in the
//     source.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/emersion/go-smtp"

	"mailproxy/config"
	"mailproxy/internal/testutil"
)

// repoRoot is the repository root seen from this package's directory,
// where go test runs.
const repoRoot = "../.."

// docFile is one markdown file of the documentation.
type docFile struct {
	path string // relative to repoRoot, for messages
	text string
}

func readDocs(t *testing.T) []docFile {
	t.Helper()
	paths := []string{"README.md"}
	more, err := filepath.Glob(filepath.Join(repoRoot, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range more {
		rel, _ := filepath.Rel(repoRoot, p)
		paths = append(paths, filepath.ToSlash(rel))
	}
	var docs []docFile
	for _, p := range paths {
		b, err := os.ReadFile(filepath.Join(repoRoot, p))
		if err != nil {
			t.Fatalf("read %s: %v", p, err)
		}
		docs = append(docs, docFile{path: p, text: string(b)})
	}
	return docs
}

// fencedBlock is a ``` block of a markdown file.
type fencedBlock struct {
	lang  string
	line  int // of the first line inside the block, 1-based
	lines []string
}

// splitMarkdown returns the fenced blocks of text, and the text with every
// fenced line blanked (so that prose checks keep line numbers).
func splitMarkdown(text string) (blocks []fencedBlock, prose []string) {
	lines := strings.Split(text, "\n")
	prose = make([]string, len(lines))
	var cur *fencedBlock
	for i, l := range lines {
		trimmed := strings.TrimSpace(l)
		switch {
		case cur == nil && strings.HasPrefix(trimmed, "```"):
			lang, _, _ := strings.Cut(strings.TrimPrefix(trimmed, "```"), " ")
			cur = &fencedBlock{lang: strings.ToLower(lang), line: i + 2}
		case cur != nil && strings.HasPrefix(trimmed, "```"):
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil:
			cur.lines = append(cur.lines, l)
		default:
			prose[i] = l
		}
	}
	return blocks, prose
}

// Shell dialects of fenced blocks whose command lines are checked.
var (
	shLangs = []string{"sh", "bash", "shell", "console", "zsh"}
	psLangs = []string{"powershell", "ps1", "pwsh"}
)

// docCommand is one mailproxy command line found in the docs.
type docCommand struct {
	where string   // file:line
	text  string   // the (joined) line as written
	args  []string // what follows the binary: subcommand, flags, arguments
}

// shellToken is a word, or an operator (;, |, &, <, >, parentheses) that
// ends a simple command.
type shellToken struct {
	s  string
	op bool
}

// splitShell splits one command line into words the way a shell would for
// the simple lines the docs contain: quotes, backslash escapes (not in
// PowerShell, where backslashes are path separators), comments and
// operators.
func splitShell(line string, powershell bool) []shellToken {
	var toks []shellToken
	var cur strings.Builder
	inWord := false
	flush := func() {
		if inWord {
			toks = append(toks, shellToken{s: cur.String()})
		}
		cur.Reset()
		inWord = false
	}
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == ' ' || c == '\t':
			flush()
		case c == '#' && !inWord:
			flush()
			return toks
		case c == '\'':
			inWord = true
			j := strings.IndexByte(line[i+1:], '\'')
			if j < 0 {
				cur.WriteString(line[i+1:])
				i = len(line)
			} else {
				cur.WriteString(line[i+1 : i+1+j])
				i += j + 1
			}
		case c == '"':
			inWord = true
			for i++; i < len(line) && line[i] != '"'; i++ {
				if line[i] == '\\' && !powershell && i+1 < len(line) && strings.IndexByte(`"\$`+"`", line[i+1]) >= 0 {
					i++
				}
				cur.WriteByte(line[i])
			}
		case c == '\\' && !powershell && i+1 < len(line):
			inWord = true
			i++
			cur.WriteByte(line[i])
		case strings.IndexByte(";|&<>()", c) >= 0:
			// "2>&1": a file descriptor number belongs to the redirection.
			if c == '>' && inWord && strings.Trim(cur.String(), "0123456789") == "" {
				cur.Reset()
				inWord = false
			}
			flush()
			toks = append(toks, shellToken{s: string(c), op: true})
		default:
			inWord = true
			cur.WriteByte(c)
		}
	}
	flush()
	return toks
}

// isMailproxyBinary reports whether a word names the mailproxy binary (or
// the mailproxy-svc wrapper of docs/INSTALL.md), as opposed to a unit,
// directory or container name that happens to be "mailproxy".
func isMailproxyBinary(s string) bool {
	base := s[strings.LastIndexAny(s, `/\`)+1:]
	switch strings.ToLower(base) {
	case "mailproxy", "mailproxy.exe", "mailproxy-svc":
	default:
		return false
	}
	dir := s[:len(s)-len(base)]
	switch dir {
	case "", "./", "/", "/usr/local/bin/", `.\`:
		return true
	}
	return strings.Contains(dir, `\`) // a Windows path
}

var subcommandLike = regexp.MustCompile(`^([a-z][a-z0-9-]*|-h|-help|--help)$`)

// commandsInLine finds the mailproxy invocations in one shell line.
func commandsInLine(toks []shellToken) [][]string {
	var found [][]string
	for i := 0; i < len(toks); i++ {
		if toks[i].op {
			continue
		}
		start := -1
		switch {
		case isMailproxyBinary(toks[i].s):
			start = i + 1
		case toks[i].s == "go" && i+2 < len(toks) && toks[i+1].s == "run" && toks[i+2].s == "./cmd/mailproxy":
			start = i + 3
			i += 2
		}
		if start < 0 || start >= len(toks) || toks[start].op {
			continue
		}
		// "docker run --name mailproxy -v ...", "systemctl reload mailproxy",
		// "nssm install mailproxy C:\...": a name, not an invocation.
		if next := toks[start].s; isMailproxyBinary(next) || !subcommandLike.MatchString(next) {
			continue
		}
		var args []string
		for _, tk := range toks[start:] {
			if tk.op {
				break
			}
			args = append(args, tk.s)
		}
		found = append(found, args)
	}
	return found
}

// docCommands returns every mailproxy command line in the shell blocks of
// docs.
func docCommands(docs []docFile) []docCommand {
	var cmds []docCommand
	for _, d := range docs {
		blocks, _ := splitMarkdown(d.text)
		for _, b := range blocks {
			ps := slices.Contains(psLangs, b.lang)
			if !ps && !slices.Contains(shLangs, b.lang) {
				continue
			}
			cont := `\`
			if ps {
				cont = "`"
			}
			for i := 0; i < len(b.lines); i++ {
				first := i
				line := b.lines[i]
				for strings.HasSuffix(strings.TrimRight(line, " "), cont) && i+1 < len(b.lines) {
					line = strings.TrimSuffix(strings.TrimRight(line, " "), cont) + " " + b.lines[i+1]
					i++
				}
				text := strings.TrimSpace(line)
				if b.lang == "console" {
					var ok bool
					if text, ok = strings.CutPrefix(text, "$ "); !ok {
						continue // output
					}
				}
				text = strings.TrimPrefix(text, "$ ")
				for _, args := range commandsInLine(splitShell(text, ps)) {
					cmds = append(cmds, docCommand{
						where: fmt.Sprintf("%s:%d", d.path, b.line+first),
						text:  text,
						args:  args,
					})
				}
			}
		}
	}
	return cmds
}

// withFlag sets flag name to value in args (args[0] is the subcommand):
// it replaces the value of every "-name V", "-name=V", "--name V" and
// "--name=V" (even after an argument, where the command would not take it
// for a flag: that mistake must still show), or else inserts "-name value"
// right after the subcommand.
func withFlag(args []string, name, value string) []string {
	out := slices.Clone(args)
	found := false
	for i := 1; i < len(out); i++ {
		a := out[i]
		if !strings.HasPrefix(a, "-") || strings.HasPrefix(a, "---") {
			continue
		}
		bare := strings.TrimLeft(a, "-")
		switch {
		case bare == name && i+1 < len(out):
			out[i+1] = value
			found = true
			i++
		case strings.HasPrefix(bare, name+"="):
			out[i] = "-" + name + "=" + value
			found = true
		}
	}
	if found {
		return out
	}
	return slices.Insert(out, 1, "-"+name, value)
}

// runDocCommand runs mailproxy in-process like main would, without a
// terminal and without a browser.
func runDocCommand(ctx context.Context, args []string, stdin string) (code int, stdout, stderr string) {
	var out, errb testutil.Buffer
	env := &cmdEnv{
		stdin:   strings.NewReader(stdin),
		stdout:  &out,
		stderr:  &errb,
		getenv:  func(string) string { return "" },
		openURL: func(string) error { return errors.New("docs test: no browser") },
	}
	code = run(ctx, env, args)
	return code, out.String(), errb.String()
}

// startDocsDemo runs the demo in-process on free ports and returns the path
// of the config it wrote, which points at its fakes.
func startDocsDemo(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	dm, err := startDemo(demoOptions{imap: "127.0.0.1:0", smtp: "127.0.0.1:0", admin: "", stateDir: dir, logOut: &testutil.Buffer{}})
	if err != nil {
		t.Fatalf("startDemo() = %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		dm.close(ctx)
	})
	return filepath.Join(dir, "mailproxy.toml")
}

func TestDocsCommandLines(t *testing.T) {
	cmds := docCommands(readDocs(t))
	if len(cmds) < 10 {
		t.Fatalf("found %d mailproxy command lines in the docs, want many: is the extraction broken?", len(cmds))
	}
	known := map[string]bool{"help": true, "-h": true, "-help": true, "--help": true}
	for _, c := range commands() {
		known[c.name] = true
	}
	demoConfig := startDocsDemo(t)
	missingConfig := filepath.Join(t.TempDir(), "no-such-config.toml")

	ran := map[string]bool{}
	for _, dc := range cmds {
		sub := dc.args[0]
		if !known[sub] {
			t.Errorf("%s: `%s`: mailproxy has no command %q", dc.where, dc.text, sub)
			continue
		}
		ctx := t.Context()
		args, stdin := dc.args, ""
		var check func(code int, stdout, stderr string) string // "" = ok
		switch sub {
		case "version":
			check = func(code int, stdout, _ string) string {
				if code != exitOK || !strings.HasPrefix(stdout, "mailproxy ") {
					return "want exit 0 and a line starting with \"mailproxy \""
				}
				return ""
			}
		case "hash-password":
			stdin = "docs test password\n"
			check = func(code int, stdout, _ string) string {
				if code != exitOK || !strings.HasPrefix(stdout, "$argon2id$") {
					return "want exit 0 and an Argon2id hash"
				}
				return ""
			}
		case "status", "check":
			// For real, against the demo's fake Microsoft 365.
			args = withFlag(args, "config", demoConfig)
			check = func(code int, _, _ string) string {
				if code != exitOK {
					return "want exit 0 against the demo"
				}
				return ""
			}
		case "demo":
			// For real on free ports; the cancelled context makes it stop
			// right after printing its banner.
			args = withFlag(withFlag(withFlag(args, "imap", "127.0.0.1:0"), "smtp", "127.0.0.1:0"), "admin", "")
			cctx, cancel := context.WithCancel(ctx)
			cancel()
			ctx = cctx
			check = func(code int, stdout, _ string) string {
				if code != exitOK || !strings.Contains(stdout, "mailproxy demo is running") {
					return "want exit 0 and the demo's banner"
				}
				return ""
			}
		case "service":
			// Windows only; elsewhere it must point to the platform's
			// service manager.
			check = func(code int, _, stderr string) string {
				if runtime.GOOS == "windows" {
					return ""
				}
				if code != exitUsage || !strings.Contains(stderr, "Windows service") {
					return "want exit 2 and a pointer to the Windows service"
				}
				return ""
			}
		case "serve", "login", "logout", "queue", "reload", "healthcheck":
			// Interactive or long-running: with a config that does not
			// exist they stop right after parsing the command line, so an
			// unknown flag, a flag after an argument or a wrong number of
			// arguments shows as a usage error that is not about the
			// config.
			args = withFlag(args, "config", missingConfig)
			check = func(code int, _, stderr string) string {
				if code != exitUsage || !strings.Contains(stderr, "load config") {
					return "want the command line accepted (and then the made-up config refused)"
				}
				return ""
			}
		default: // help
			check = func(code int, _, _ string) string {
				if code != exitOK {
					return "want exit 0"
				}
				return ""
			}
		}
		t.Logf("%s: mailproxy %s", dc.where, strings.Join(args, " "))
		code, stdout, stderr := runDocCommand(ctx, args, stdin)
		if msg := check(code, stdout, stderr); msg != "" {
			t.Errorf("%s: `%s`: run(%q) = exit %d, %s\nstdout: %s\nstderr: %s", dc.where, dc.text, args, code, msg, stdout, stderr)
		}
		ran[sub] = true
	}
	for _, sub := range []string{"serve", "login", "status", "check", "version", "hash-password", "demo"} {
		if !ran[sub] {
			t.Errorf("the docs show no `mailproxy %s` command line; the test would not notice if it drifted", sub)
		}
	}
}

func TestDocsCommandExtraction(t *testing.T) {
	doc := docFile{path: "x.md", text: "```sh\n" +
		"sudo systemctl reload mailproxy   # not a command\n" +
		"docker run --rm --name mailproxy -v a:/var/lib/mailproxy \\\n" +
		"  mailproxy login -manual alice@contoso.com\n" +
		"mailproxy status -config \"/etc/mailproxy/my config.toml\" 2>&1 | less\n" +
		"go run ./cmd/mailproxy demo\n" +
		"mailproxy sttaus\n" +
		"```\n" +
		"```powershell\n" +
		"& 'C:\\Program Files\\mailproxy\\mailproxy.exe' check -config C:\\x\\mailproxy.toml\n" +
		"nssm install mailproxy 'C:\\mailproxy.exe' serve `\n  -config C:\\x.toml\n" +
		"```\n"}
	got := docCommands([]docFile{doc})
	want := []struct {
		where string
		args  []string
	}{
		{"x.md:3", []string{"login", "-manual", "alice@contoso.com"}},
		{"x.md:5", []string{"status", "-config", "/etc/mailproxy/my config.toml"}},
		{"x.md:6", []string{"demo"}},
		{"x.md:7", []string{"sttaus"}},
		{"x.md:10", []string{"check", "-config", `C:\x\mailproxy.toml`}},
		{"x.md:11", []string{"serve", "-config", `C:\x.toml`}},
	}
	if len(got) != len(want) {
		t.Fatalf("docCommands() found %d commands %+v, want %d", len(got), got, len(want))
	}
	for i, w := range want {
		if got[i].where != w.where || !slices.Equal(got[i].args, w.args) {
			t.Errorf("docCommands()[%d] = %s %q, want %s %q", i, got[i].where, got[i].args, w.where, w.args)
		}
	}
}

func TestDocsWithFlag(t *testing.T) {
	tests := []struct {
		args []string
		want []string
	}{
		{[]string{"status"}, []string{"status", "-config", "X"}},
		{[]string{"check", "-config", "/etc/a.toml"}, []string{"check", "-config", "X"}},
		{[]string{"check", "--config=/etc/a.toml"}, []string{"check", "-config=X"}},
		{[]string{"login", "-device", "alice", "-config", "a"}, []string{"login", "-device", "alice", "-config", "X"}},
		{[]string{"demo", "-imap", "h:1", "-config", "a", "-config=b"}, []string{"demo", "-imap", "h:1", "-config", "X", "-config=X"}},
	}
	for _, tt := range tests {
		if got := withFlag(tt.args, "config", "X"); !slices.Equal(got, tt.want) {
			t.Errorf("withFlag(%q, config, X) = %q, want %q", tt.args, got, tt.want)
		}
	}
}

// ---- config keys ----

var configSections = []string{"imap", "smtp", "pop3", "tls", "admin", "security", "log", "provider", "account", "spool", "tokens", "device"}

var (
	exampleSectionRE = regexp.MustCompile(`^#?\s*\[\[?([a-z0-9_]+)\]\]?\s*(#.*)?$`)
	exampleKeyRE     = regexp.MustCompile(`^#?\s*([a-z][a-z0-9_]*)\s*=`)
)

// exampleKeys returns the keys config.example.toml shows, set or commented
// out, as "section.key" ("key" at the top level), and the bare key names.
func exampleKeys(text string) (keys, bare map[string]bool) {
	keys, bare = map[string]bool{}, map[string]bool{}
	section := ""
	for _, l := range strings.Split(text, "\n") {
		l = strings.TrimSpace(l)
		if m := exampleSectionRE.FindStringSubmatch(l); m != nil && slices.Contains(configSections, m[1]) {
			section = m[1]
			continue
		}
		if m := exampleKeyRE.FindStringSubmatch(l); m != nil {
			k := m[1]
			if section != "" {
				k = section + "." + k
			}
			keys[k] = true
			bare[m[1]] = true
		}
	}
	return keys, bare
}

// parserKnows reports whether the config parser accepts key ("section.key"
// or a top-level "key") as a key name, whatever it then thinks of the value.
func parserKnows(t *testing.T, key string) bool {
	t.Helper()
	text := key + " = 1\n"
	if section, name, ok := strings.Cut(key, "."); ok {
		header := "[" + section + "]"
		if section == "provider" || section == "account" || section == "device" {
			header = "[" + header + "]"
		}
		text = header + "\n" + name + " = 1\n"
	}
	_, err := config.Parse([]byte(text), t.TempDir())
	for _, e := range flattenErrors(err) {
		var ce *config.Error
		if errors.As(e, &ce) && strings.HasPrefix(ce.Msg, "unknown key") {
			return false
		}
	}
	return true
}

func flattenErrors(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var all []error
		for _, e := range j.Unwrap() {
			all = append(all, flattenErrors(e)...)
		}
		return all
	}
	return []error{err}
}

// docKey is a config key named in the docs.
type docKey struct {
	where string
	key   string // "section.key", or a bare "key" (a fragment of a table)
}

var (
	inlineKeyRE     = regexp.MustCompile(`^(` + strings.Join(configSections, "|") + `)\.([a-z][a-z0-9_]*)(\[\d+\])?( = .*)?$`)
	inlineAssignRE  = regexp.MustCompile(`^([a-z][a-z0-9_]*) = \S`)
	inlineSectionRE = regexp.MustCompile(`^\[\[?([a-z_]+)\]\]?$`)
)

// codeSpans returns the `code spans` of one line of markdown.
func codeSpans(line string) []string {
	var spans []string
	for {
		i := strings.IndexByte(line, '`')
		if i < 0 {
			return spans
		}
		n := i
		for n < len(line) && line[n] == '`' {
			n++
		}
		ticks := line[i:n]
		j := strings.Index(line[n:], ticks)
		if j < 0 {
			return spans
		}
		spans = append(spans, strings.TrimSpace(line[n:n+j]))
		line = line[n+j+len(ticks):]
	}
}

// docKeys returns the config keys named in a markdown file: in ```toml
// blocks, and in code spans such as `security.allow_from`,
// `client_secret_file = "..."` or `[tls]`. Unparsable TOML blocks are
// errors.
func docKeys(d docFile) (keys []docKey, errs []string) {
	blocks, prose := splitMarkdown(d.text)
	for _, b := range blocks {
		if b.lang != "toml" {
			continue
		}
		where := fmt.Sprintf("%s:%d", d.path, b.line)
		var m map[string]any
		if _, err := toml.Decode(strings.Join(b.lines, "\n"), &m); err != nil {
			errs = append(errs, fmt.Sprintf("%s: the TOML block does not parse: %v", where, err))
			continue
		}
		for k, v := range m {
			switch v := v.(type) {
			case map[string]any:
				for kk := range v {
					keys = append(keys, docKey{where, k + "." + kk})
				}
			case []map[string]any:
				for _, t := range v {
					for kk := range t {
						keys = append(keys, docKey{where, k + "." + kk})
					}
				}
			default:
				keys = append(keys, docKey{where, k})
			}
		}
	}
	for i, l := range prose {
		where := fmt.Sprintf("%s:%d", d.path, i+1)
		for _, s := range codeSpans(l) {
			switch {
			case inlineKeyRE.MatchString(s):
				m := inlineKeyRE.FindStringSubmatch(s)
				keys = append(keys, docKey{where, m[1] + "." + m[2]})
			case inlineSectionRE.MatchString(s):
				if sec := inlineSectionRE.FindStringSubmatch(s)[1]; !slices.Contains(configSections, sec) {
					errs = append(errs, fmt.Sprintf("%s: `%s` is not a section of the config", where, s))
				}
			case inlineAssignRE.MatchString(s):
				keys = append(keys, docKey{where, inlineAssignRE.FindStringSubmatch(s)[1]})
			}
		}
	}
	return keys, errs
}

func TestDocsConfigKeys(t *testing.T) {
	example, err := os.ReadFile(filepath.Join(repoRoot, "config.example.toml"))
	if err != nil {
		t.Fatal(err)
	}
	keys, bare := exampleKeys(string(example))
	if len(keys) < 40 {
		t.Fatalf("exampleKeys(config.example.toml) found %d keys, want every key (more than 40)", len(keys))
	}
	for k := range keys {
		if !parserKnows(t, k) {
			t.Errorf("config.example.toml shows key %q, which the config parser does not know", k)
		}
	}
	total := 0
	for _, d := range readDocs(t) {
		dk, errs := docKeys(d)
		for _, e := range errs {
			t.Error(e)
		}
		total += len(dk)
		for _, k := range dk {
			if strings.Contains(k.key, ".") && !keys[k.key] || !strings.Contains(k.key, ".") && !keys[k.key] && !bare[k.key] {
				t.Errorf("%s: the docs name config key %q, which config.example.toml does not have", k.where, k.key)
			}
		}
	}
	if total < 20 {
		t.Errorf("found %d config keys in the docs, want many: is the extraction broken?", total)
	}
}

// ---- links ----

var mdLinkRE = regexp.MustCompile(`\]\(([^)\s]+)\)`)

// headingSlugs returns the GitHub anchors of a markdown file's headings.
func headingSlugs(text string) map[string]bool {
	slugs := map[string]bool{}
	_, prose := splitMarkdown(text)
	for _, l := range prose {
		if !strings.HasPrefix(l, "#") {
			continue
		}
		h := strings.TrimSpace(strings.TrimLeft(l, "#"))
		var b strings.Builder
		for _, r := range strings.ToLower(h) {
			switch {
			case r == ' ':
				b.WriteRune('-')
			case r == '-' || r == '_' || 'a' <= r && r <= 'z' || '0' <= r && r <= '9':
				b.WriteRune(r)
			}
		}
		slugs[b.String()] = true
	}
	return slugs
}

func TestDocsLinks(t *testing.T) {
	for _, d := range readDocs(t) {
		_, prose := splitMarkdown(d.text)
		for i, l := range prose {
			for _, m := range mdLinkRE.FindAllStringSubmatch(l, -1) {
				target := m[1]
				if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
					continue
				}
				where := fmt.Sprintf("%s:%d", d.path, i+1)
				file, frag, _ := strings.Cut(target, "#")
				path := filepath.Join(repoRoot, filepath.Dir(d.path), file)
				if file == "" {
					path = filepath.Join(repoRoot, d.path)
				}
				b, err := os.ReadFile(path)
				if errors.Is(err, fs.ErrNotExist) {
					t.Errorf("%s: link %q: %s does not exist", where, target, file)
					continue
				}
				if err != nil && !strings.Contains(err.Error(), "is a directory") {
					t.Errorf("%s: link %q: %v", where, target, err)
					continue
				}
				if frag != "" && strings.HasSuffix(path, ".md") && !headingSlugs(string(b))[frag] {
					t.Errorf("%s: link %q: %s has no heading for #%s", where, target, file, frag)
				}
			}
		}
	}
}

// ---- mailproxy's own replies in TROUBLESHOOTING.md ----

var (
	smtpCodePrefixRE = regexp.MustCompile(`^\d{3} \d\.\d{1,3}\.\d{1,3} `)
	imapCodePrefixRE = regexp.MustCompile(`^\[[A-Z-]+\] `)
)

// replyFragments turns a quoted reply such as
// "NO [ALERT] account … needs a new sign-in by the admin: …" into the
// literal pieces that must appear in the source.
// pop3CodePrefixRE is an RFC 2449 / RFC 3206 response code before the text.
var pop3CodePrefixRE = regexp.MustCompile(`^\[(AUTH|SYS/TEMP|SYS/PERM|IN-USE|LOGIN-DELAY)\] `)

func replyFragments(reply string) []string {
	for _, p := range []string{"* BYE ", "NO ", "BAD ", "OK ", "-ERR "} {
		reply = strings.TrimPrefix(reply, p)
	}
	reply = pop3CodePrefixRE.ReplaceAllString(reply, "")
	reply = smtpCodePrefixRE.ReplaceAllString(reply, "")
	reply = imapCodePrefixRE.ReplaceAllString(reply, "")
	var frags []string
	for _, f := range strings.Split(reply, "…") {
		f = strings.Trim(f, " ;:,.")
		if len(f) >= 8 {
			frags = append(frags, f)
		}
	}
	return frags
}

// sourceText is every non-test Go file of the packages that answer
// clients, plus the texts go-smtp answers on our behalf.
func sourceText(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, dir := range []string{"auth", "front", "upstream", "relay", "smtpclient", "submit", "graph"} {
		err := filepath.WalkDir(filepath.Join(repoRoot, dir), func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			data, err := os.ReadFile(path)
			b.Write(data)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, e := range []*smtp.SMTPError{smtp.ErrDataTooLarge, smtp.ErrAuthRequired, smtp.ErrAuthUnsupported} {
		b.WriteString("\n" + e.Message)
	}
	return b.String()
}

// inSource reports whether fragment is in src, or, for a text built from
// several constants, each of its "; "-separated parts is.
func inSource(src, fragment string) bool {
	if strings.Contains(src, fragment) {
		return true
	}
	parts := strings.Split(fragment, "; ")
	if len(parts) < 2 {
		return false
	}
	for _, p := range parts {
		if !strings.Contains(src, strings.Trim(p, " ;:,.")) {
			return false
		}
	}
	return true
}

func TestDocsMailproxyReplies(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "docs", "TROUBLESHOOTING.md"))
	if err != nil {
		t.Fatal(err)
	}
	src := sourceText(t)
	in, checked := false, 0
	for i, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "## ") {
			in = strings.HasPrefix(l, "## What mailproxy itself answers")
			continue
		}
		if !in || !strings.HasPrefix(l, "| `") {
			continue
		}
		first, _, _ := strings.Cut(strings.TrimPrefix(l, "|"), " | ")
		for _, reply := range codeSpans(first) {
			for _, f := range replyFragments(reply) {
				checked++
				if !inSource(src, f) {
					t.Errorf("docs/TROUBLESHOOTING.md:%d: mailproxy's reply %q: the text %q is not in the fronts' code any more", i+1, reply, f)
				}
			}
		}
	}
	if checked < 30 {
		t.Errorf("checked %d reply texts of docs/TROUBLESHOOTING.md, want more than 30: is the section still called \"What mailproxy itself answers\"?", checked)
	}
}

func TestDocsReplyFragments(t *testing.T) {
	tests := []struct {
		reply string
		want  []string
	}{
		{"NO [ALERT] account … needs a new sign-in by the admin: …", []string{"needs a new sign-in by the admin"}},
		{"454 4.7.0 throttled by Microsoft 365; retry in … s", []string{"throttled by Microsoft 365; retry in"}},
		{"* BYE too many connections", []string{"too many connections"}},
		{"-ERR [SYS/PERM] account … is not signed in", []string{"is not signed in"}},
	}
	for _, tt := range tests {
		if got := replyFragments(tt.reply); !slices.Equal(got, tt.want) {
			t.Errorf("replyFragments(%q) = %q, want %q", tt.reply, got, tt.want)
		}
	}
	if !inSource("x := \"server busy; \" + msgTryLater\nmsgTryLater = \"try again later\"", "server busy; try again later") {
		t.Errorf("inSource(…, %q) = false, want true for a text built from two constants", "server busy; try again later")
	}
}
