package shape

import (
	"bufio"
	"bytes"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
)

const (
	maxFileLines  = 700 // lines in one production (non-test) Go file
	maxComplexity = 25  // cyclomatic complexity of one function, as gocyclo counts it
)

// exceptions are the places over a limit that are known and being worked
// on: "path" for a file, "path:Func" (or "path:Type.Method") for a
// function. The test fails for an exception that is no longer over its
// limit, so this list only shrinks.
var exceptions = map[string]bool{}

// root is the module's root: two levels up from this package.
func root(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		t.Fatalf("module root not found at %s: %v", dir, err)
	}
	return dir
}

// productionFiles lists the module's non-test Go files, relative to the
// root, skipping testdata and hidden directories.
func productionFiles(t *testing.T, dir string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if p != dir && (name == "testdata" || strings.HasPrefix(name, ".") || name == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(name, ".go") && !strings.HasSuffix(name, "_test.go") {
			rel, err := filepath.Rel(dir, p)
			if err != nil {
				return err
			}
			files = append(files, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 50 {
		t.Fatalf("only %d production files found under %s: the walk is wrong", len(files), dir)
	}
	return files
}

func countLines(b []byte) int {
	n := bytes.Count(b, []byte("\n"))
	if len(b) > 0 && b[len(b)-1] != '\n' {
		n++
	}
	return n
}

// complexity is gocyclo's count: 1, plus one for each if, for, range,
// non-default case, non-default select case, && and ||, function literals
// included.
func complexity(fn *ast.FuncDecl) int {
	c := 1
	ast.Inspect(fn, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.IfStmt, *ast.ForStmt, *ast.RangeStmt:
			c++
		case *ast.CaseClause:
			if n.List != nil {
				c++
			}
		case *ast.CommClause:
			if n.Comm != nil {
				c++
			}
		case *ast.BinaryExpr:
			if n.Op == token.LAND || n.Op == token.LOR {
				c++
			}
		}
		return true
	})
	return c
}

func funcName(fn *ast.FuncDecl) string {
	if fn.Recv == nil || len(fn.Recv.List) == 0 {
		return fn.Name.Name
	}
	t := fn.Recv.List[0].Type
	for {
		switch x := t.(type) {
		case *ast.StarExpr:
			t = x.X
			continue
		case *ast.IndexExpr:
			t = x.X
			continue
		case *ast.IndexListExpr:
			t = x.X
			continue
		}
		break
	}
	if id, ok := t.(*ast.Ident); ok {
		return id.Name + "." + fn.Name.Name
	}
	return fn.Name.Name
}

func TestComplexity(t *testing.T) {
	fset := token.NewFileSet()
	dir := root(t)
	var over []string
	for _, rel := range productionFiles(t, dir) {
		f, err := parser.ParseFile(fset, filepath.Join(dir, rel), nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			fn, ok := d.(*ast.FuncDecl)
			if !ok {
				continue
			}
			c := complexity(fn)
			key := rel + ":" + funcName(fn)
			if c > maxComplexity {
				over = append(over, key)
				if !exceptions[key] {
					t.Errorf("%s: cyclomatic complexity %d, over %d: split it", key, c, maxComplexity)
				}
			}
		}
	}
	checkStale(t, over, true)
}

func TestFileSize(t *testing.T) {
	dir := root(t)
	var over []string
	for _, rel := range productionFiles(t, dir) {
		b, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil {
			t.Fatal(err)
		}
		if n := countLines(b); n > maxFileLines {
			over = append(over, rel)
			if !exceptions[rel] {
				t.Errorf("%s: %d lines, over %d: split it by what the parts do", rel, n, maxFileLines)
			}
		}
	}
	checkStale(t, over, false)
}

// checkStale fails for an exception of the kind (functions or files) that
// is no longer over its limit.
func checkStale(t *testing.T, over []string, funcs bool) {
	t.Helper()
	still := map[string]bool{}
	for _, k := range over {
		still[k] = true
	}
	var stale []string
	for k := range exceptions {
		if strings.Contains(k, ".go:") == funcs && !still[k] {
			stale = append(stale, k)
		}
	}
	sort.Strings(stale)
	for _, k := range stale {
		t.Errorf("%s is within the limits now: remove it from exceptions in shape_test.go", k)
	}
}

// TestImports checks the dependency rules of docs/ARCHITECTURE.md that
// the compiler does not: the token side stands on nothing of the protocol
// side.
func TestImports(t *testing.T) {
	dir := root(t)
	module := modulePath(t, dir)
	rules := map[string][]string{
		// package directory: module packages it must not import (prefixes)
		"oauth":       {"front", "upstream", "relay", "smtpclient", "submit", "daemon", "admin", "spool", "graph", "auth", "cmd"},
		"oauth/store": {"front", "upstream", "relay", "smtpclient", "submit", "daemon", "admin", "spool", "graph", "auth", "cmd", "oauth"},
		"relay":       {"front", "upstream", "auth", "oauth", "daemon", "admin", "cmd"},
		"auth":        {"front", "relay", "daemon", "admin", "cmd"}, // a Grant names its *upstream.Upstream
		"config":      {"front", "upstream", "relay", "daemon", "admin", "cmd", "oauth", "auth"},
		// The password hash parser, shared by auth and config: a leaf.
		"auth/phc": {"front", "upstream", "relay", "smtpclient", "submit", "daemon", "admin", "spool", "graph", "cmd", "oauth", "config", "auth"},
	}
	// allowed are the packages under a banned prefix that a package may
	// still import: config checks password hashes with auth's own parser,
	// which imports nothing of ours (its rule above).
	allowed := map[string][]string{"config": {"auth/phc"}}
	fset := token.NewFileSet()
	checked := 0
	for _, rel := range productionFiles(t, dir) {
		pkg := filepath.ToSlash(filepath.Dir(rel))
		banned, ok := rules[pkg]
		if !ok {
			continue
		}
		checked++
		f, err := parser.ParseFile(fset, filepath.Join(dir, rel), nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			inner, ok := strings.CutPrefix(path, module+"/")
			if !ok {
				continue
			}
			if slices.Contains(allowed[pkg], inner) {
				continue
			}
			for _, b := range banned {
				if inner == b || strings.HasPrefix(inner, b+"/") {
					t.Errorf("%s imports %s: %s must not depend on %s", rel, path, pkg, b)
				}
			}
		}
	}
	if checked == 0 {
		t.Fatal("no file of a ruled package was found")
	}
}

func modulePath(t *testing.T, dir string) string {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if m, ok := strings.CutPrefix(s.Text(), "module "); ok {
			return strings.TrimSpace(m)
		}
	}
	t.Fatal("go.mod names no module")
	return ""
}
