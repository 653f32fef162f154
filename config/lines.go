package config

import (
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/BurntSushi/toml"
)

// toml v1.6.0 gives positions only in a ParseError. MetaData keeps one
// position per dotted key, unexported, and every [[account]] shares the key
// "account.flow", so it could not tell account[0].flow from account[1].flow
// anyway. locate recovers the lines with a small scanner over text the
// decoder has already accepted, and trusts the result only when the scanner
// saw exactly the keys MetaData.Keys lists, in the same order.

// located holds, for a document, the name errors use for each entry of
// MetaData.Keys and the line of every key and array element.
type located struct {
	names []string       // parallel to MetaData.Keys: "account[1].flow"
	lines map[string]int // name -> 1-based line
	lower map[string]int // lower-cased name -> line, for "[IMAP]" (an error itself)
}

// line returns the line of key, else of its nearest enclosing key or table
// that has one (a missing account[1].client_id gives the [[account]] header
// line), else 0.
func (l *located) line(key string) int {
	if l == nil {
		return 0
	}
	for key != "" {
		if n, ok := l.lines[key]; ok {
			return n
		}
		if n, ok := l.lower[key]; ok {
			return n
		}
		i := strings.LastIndexAny(key, ".[")
		if i <= 0 {
			break
		}
		key = key[:i]
	}
	return 0
}

// locate scans data; it returns nil when its reading of the document differs
// from the decoder's (want).
func locate(data string, want []toml.Key) *located {
	for _, bom := range []string{"\xff\xfe", "\xfe\xff", "\xef\xbb\xbf"} {
		if strings.HasPrefix(data, bom) {
			data = data[len(bom):]
			break
		}
	}
	sc := &scanner{s: data, line: 1, lines: map[string]int{}, arrays: map[string]int{}}
	sc.document()
	if sc.bad || len(sc.keys) != len(want) {
		return nil
	}
	for i, k := range want {
		if k.String() != sc.keys[i] {
			return nil
		}
	}
	lower := map[string]int{}
	for name, line := range sc.lines {
		if n, ok := lower[strings.ToLower(name)]; !ok || line < n {
			lower[strings.ToLower(name)] = line
		}
	}
	return &located{names: sc.names, lines: sc.lines, lower: lower}
}

type scanner struct {
	s      string
	i      int
	line   int
	bad    bool
	keys   []string       // plain dotted keys, like toml.Key.String
	names  []string       // the same keys named with array indexes
	lines  map[string]int // name -> line
	arrays map[string]int // plain key of an [[array table]] -> headers seen
}

func (sc *scanner) eof() bool { return sc.bad || sc.i >= len(sc.s) }

func (sc *scanner) peek() byte {
	if sc.eof() {
		return 0
	}
	return sc.s[sc.i]
}

func (sc *scanner) has(prefix string) bool { return strings.HasPrefix(sc.s[sc.i:], prefix) }

func (sc *scanner) fail() { sc.bad = true }

func (sc *scanner) record(plain []string, name string, line int) {
	sc.keys = append(sc.keys, toml.Key(plain).String())
	sc.names = append(sc.names, name)
	if _, ok := sc.lines[name]; !ok {
		sc.lines[name] = line
	}
}

func (sc *scanner) document() {
	var table []string // plain key of the current [table]
	var tableName string
	for !sc.bad {
		sc.skipBlank()
		if sc.eof() {
			return
		}
		line := sc.line
		if sc.peek() == '[' {
			array := sc.has("[[")
			closing := "]"
			if array {
				closing = "]]"
				sc.i++
			}
			sc.i++
			key := sc.key()
			sc.skipSpace()
			if sc.eof() || !sc.has(closing) {
				sc.fail()
				return
			}
			sc.i += len(closing)
			if array {
				sc.arrays[toml.Key(key).String()]++
			}
			table, tableName = key, sc.tableName(key)
			sc.record(key, tableName, line)
			sc.endLine()
			continue
		}
		key := sc.key()
		plain := append(append([]string(nil), table...), key...)
		name := joinName(tableName, key)
		sc.record(plain, name, line)
		sc.keyValue(plain, name)
		sc.endLine()
	}
}

// tableName names a table header, indexing every part that is an array of
// tables by the headers seen so far.
func (sc *scanner) tableName(key []string) string {
	var b strings.Builder
	for i, k := range key {
		if i > 0 {
			b.WriteByte('.')
		}
		b.WriteString(toml.Key{k}.String())
		if n := sc.arrays[toml.Key(key[:i+1]).String()]; n > 0 {
			b.WriteString("[" + strconv.Itoa(n-1) + "]")
		}
	}
	return b.String()
}

func joinName(prefix string, key []string) string {
	var b strings.Builder
	b.WriteString(prefix)
	for _, k := range key {
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(toml.Key{k}.String())
	}
	return b.String()
}

// keyValue reads "= value" after a key.
func (sc *scanner) keyValue(plain []string, name string) {
	sc.skipSpace()
	if sc.peek() != '=' {
		sc.fail()
		return
	}
	sc.i++
	sc.skipSpace()
	sc.value(plain, name)
}

func (sc *scanner) value(plain []string, name string) {
	switch {
	case sc.eof():
		sc.fail()
	case sc.has(`"""`):
		sc.multiline(`"""`, true)
	case sc.has(`'''`):
		sc.multiline(`'''`, false)
	case sc.peek() == '"':
		sc.quoted('"', true)
	case sc.peek() == '\'':
		sc.quoted('\'', false)
	case sc.peek() == '[':
		sc.array(plain, name)
	case sc.peek() == '{':
		sc.inlineTable(plain, name)
	default:
		// Numbers, booleans and date-times hold none of these bytes.
		start := sc.i
		for !sc.eof() && !strings.ContainsRune(",]}#\r\n", rune(sc.s[sc.i])) {
			sc.i++
		}
		if sc.i == start {
			sc.fail()
		}
	}
}

// array reads an array. Keys inside inline tables in it belong to the
// array's key, as in MetaData.Keys; names get the element index.
func (sc *scanner) array(plain []string, name string) {
	sc.i++ // [
	for n := 0; !sc.bad; n++ {
		sc.skipBlank()
		if sc.eof() {
			sc.fail()
			return
		}
		if sc.peek() == ']' {
			sc.i++
			return
		}
		elem := name + "[" + strconv.Itoa(n) + "]"
		sc.lines[elem] = sc.line
		sc.value(plain, elem)
		sc.skipBlank()
		switch sc.peek() {
		case ',':
			sc.i++
		case ']':
			sc.i++
			return
		default:
			sc.fail()
		}
	}
}

func (sc *scanner) inlineTable(plain []string, name string) {
	sc.i++ // {
	for !sc.bad {
		sc.skipBlank()
		if sc.eof() {
			sc.fail()
			return
		}
		if sc.peek() == '}' {
			sc.i++
			return
		}
		line := sc.line
		key := sc.key()
		kplain := append(append([]string(nil), plain...), key...)
		kname := joinName(name, key)
		sc.record(kplain, kname, line)
		sc.keyValue(kplain, kname)
		sc.skipBlank()
		switch sc.peek() {
		case ',':
			sc.i++
		case '}':
			sc.i++
			return
		default:
			sc.fail()
		}
	}
}

// key reads a dotted key.
func (sc *scanner) key() []string {
	var parts []string
	for !sc.bad {
		sc.skipSpace()
		parts = append(parts, sc.simpleKey())
		sc.skipSpace()
		if sc.peek() != '.' {
			break
		}
		sc.i++
	}
	return parts
}

func (sc *scanner) simpleKey() string {
	start := sc.i
	switch sc.peek() {
	case '"':
		sc.quoted('"', true)
		if sc.bad {
			return ""
		}
		k, ok := unescape(sc.s[start+1 : sc.i-1])
		if !ok {
			sc.fail()
		}
		return k
	case '\'':
		sc.quoted('\'', false)
		if sc.bad {
			return ""
		}
		return sc.s[start+1 : sc.i-1]
	}
	for !sc.eof() && isBareKeyByte(sc.s[sc.i]) {
		sc.i++
	}
	if sc.i == start {
		sc.fail()
	}
	return sc.s[start:sc.i]
}

func isBareKeyByte(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '_' || c == '-'
}

// quoted skips a one-line string; sc.i is at the opening quote.
func (sc *scanner) quoted(q byte, escapes bool) {
	sc.i++
	for !sc.eof() {
		c := sc.s[sc.i]
		switch {
		case c == '\n':
			sc.fail()
			return
		case escapes && c == '\\':
			sc.i += 2
		case c == q:
			sc.i++
			return
		default:
			sc.i++
		}
	}
	sc.fail()
}

// multiline skips a multi-line string; up to two quotes may precede the
// closing delimiter.
func (sc *scanner) multiline(delim string, escapes bool) {
	sc.i += len(delim)
	for !sc.eof() {
		c := sc.s[sc.i]
		switch {
		case escapes && c == '\\':
			if sc.i+1 < len(sc.s) && sc.s[sc.i+1] == '\n' {
				sc.line++
			}
			sc.i += 2
		case sc.has(delim):
			sc.i += len(delim)
			for n := 0; n < 2 && sc.peek() == delim[0]; n++ {
				sc.i++
			}
			return
		default:
			if c == '\n' {
				sc.line++
			}
			sc.i++
		}
	}
	sc.fail()
}

// skipSpace skips spaces and tabs.
func (sc *scanner) skipSpace() {
	for !sc.eof() && (sc.s[sc.i] == ' ' || sc.s[sc.i] == '\t') {
		sc.i++
	}
}

// skipBlank skips whitespace, newlines and comments.
func (sc *scanner) skipBlank() {
	for !sc.eof() {
		switch sc.s[sc.i] {
		case ' ', '\t', '\r':
			sc.i++
		case '\n':
			sc.i++
			sc.line++
		case '#':
			sc.skipComment()
		default:
			return
		}
	}
}

func (sc *scanner) skipComment() {
	for !sc.eof() && sc.s[sc.i] != '\n' {
		sc.i++
	}
}

// endLine reads the rest of a key/value or header line.
func (sc *scanner) endLine() {
	sc.skipSpace()
	if sc.peek() == '#' {
		sc.skipComment()
	}
	if sc.peek() == '\r' {
		sc.i++
	}
	switch {
	case sc.eof():
	case sc.s[sc.i] == '\n':
		sc.i++
		sc.line++
	default:
		sc.fail()
	}
}

// unescape decodes the escapes of a TOML basic string.
func unescape(s string) (string, bool) {
	if !strings.Contains(s, `\`) {
		return s, true
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		i++
		if i >= len(s) {
			return "", false
		}
		hex := 0
		switch s[i] {
		case 'b':
			b.WriteByte('\b')
		case 't':
			b.WriteByte('\t')
		case 'n':
			b.WriteByte('\n')
		case 'f':
			b.WriteByte('\f')
		case 'r':
			b.WriteByte('\r')
		case 'e':
			b.WriteByte('\x1b')
		case '"', '\\':
			b.WriteByte(s[i])
		case 'x':
			hex = 2
		case 'u':
			hex = 4
		case 'U':
			hex = 8
		default:
			return "", false
		}
		if hex > 0 {
			if i+1+hex > len(s) {
				return "", false
			}
			n, err := strconv.ParseUint(s[i+1:i+1+hex], 16, 32)
			if err != nil || !utf8.ValidRune(rune(n)) {
				return "", false
			}
			b.WriteRune(rune(n))
			i += hex
		}
	}
	return b.String(), true
}
