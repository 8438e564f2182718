package e2e

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"go/types"
	"io/fs"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestServerIsABitPipe proves from the build graph that the server cannot
// speak SSH or SFTP, or take part in resumable streams: it links none of
// those packages.
func TestServerIsABitPipe(t *testing.T) {
	t.Parallel()
	deps := goListDeps(t, "../../../cmd/converge")
	for _, banned := range []string{
		"golang.org/x/crypto/ssh",
		"github.com/gliderlabs/ssh",
		"github.com/pkg/sftp",
		"github.com/converge-ci/converge/internal/resume",
		"github.com/converge-ci/converge/agent",
		"github.com/converge-ci/converge/agent/sshd",
	} {
		if deps[banned] {
			t.Errorf("cmd/converge links %s; the server must stay a bit pipe", banned)
		}
	}
}

// TestImportsFlowOneWay: the agent and the client tools (the browser
// terminal's included) never import the server, and the server never
// imports them; the agent's lifetime never
// imports the agent (the agent imports it), nor does the agent's SSH
// server, which is handed its connections as a net.Listener.
func TestImportsFlowOneWay(t *testing.T) {
	t.Parallel()
	for pkg, banned := range map[string][]string{
		"../../../agent":          {"github.com/converge-ci/converge/server", "github.com/converge-ci/converge/wsproxy"},
		"../../../agent/lifetime": {"github.com/converge-ci/converge/agent", "github.com/converge-ci/converge/server", "github.com/converge-ci/converge/wsproxy"},
		"../../../agent/sshd":     {"github.com/converge-ci/converge/agent", "github.com/converge-ci/converge/agent/lifetime", "github.com/converge-ci/converge/server", "github.com/converge-ci/converge/wsproxy"},
		"../../../wsproxy":        {"github.com/converge-ci/converge/server", "github.com/converge-ci/converge/agent"},
		// The journal, the state folder and the converge command are
		// leaves the agent and its SSH server build on.
		"../../../agent/journal":  {"github.com/converge-ci/converge/agent", "github.com/converge-ci/converge/agent/sshd", "github.com/converge-ci/converge/agent/ctl", "golang.org/x/crypto/ssh"},
		"../../../agent/ctl":      {"github.com/converge-ci/converge/agent", "github.com/converge-ci/converge/agent/sshd", "github.com/converge-ci/converge/server"},
		"../../../agent/statedir": {"github.com/converge-ci/converge/agent", "github.com/converge-ci/converge/agent/sshd"},
		"../../../server":         {"github.com/converge-ci/converge/agent", "github.com/converge-ci/converge/wsproxy"},
		"../../../webterm":        {"github.com/converge-ci/converge/server", "github.com/converge-ci/converge/agent", "github.com/converge-ci/converge/wsproxy"},
	} {
		deps := goListDeps(t, pkg)
		for _, b := range banned {
			if deps[b] {
				t.Errorf("%s imports %s", pkg, b)
			}
		}
	}
}

// TestRegistryLinksNoTransport: the registry decides who holds an ID and
// nothing else: it links no WebSocket and no net/http, so it cannot touch
// a connection.
func TestRegistryLinksNoTransport(t *testing.T) {
	t.Parallel()
	deps := goListDeps(t, "../../../server/internal/registry")
	for _, banned := range []string{"github.com/coder/websocket", "net/http"} {
		if deps[banned] {
			t.Errorf("server/internal/registry links %s", banned)
		}
	}
}

// TestHandlersDoNotAskForACluster: the server's handlers route a client
// or a stream by asking the registry (Route) and the peers, never by
// checking whether a cluster is configured. No function of package server
// that takes a request or a response writer, and no function in the
// files of the agent, client, stream and terminal endpoints, mentions the
// server's cluster field.
func TestHandlersDoNotAskForACluster(t *testing.T) {
	t.Parallel()
	handlerFiles := map[string]bool{"agent.go": true, "client.go": true, "forward.go": true, "pool.go": true, "terminal.go": true}
	files, err := filepath.Glob("../../../server/*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	handlers := 0
	for _, path := range files {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			fn, ok := d.(*ast.FuncDecl)
			if !ok || fn.Body == nil {
				continue
			}
			http := takesHTTP(fn)
			if http {
				handlers++
			}
			if !http && !handlerFiles[filepath.Base(path)] {
				continue
			}
			ast.Inspect(fn.Body, func(n ast.Node) bool {
				if sel, ok := n.(*ast.SelectorExpr); ok && sel.Sel.Name == "cluster" {
					t.Errorf("%s: %s mentions .cluster; route with the registry and the peers instead", fset.Position(sel.Pos()), fn.Name.Name)
				}
				return true
			})
		}
	}
	if handlers < 10 {
		t.Fatalf("found %d functions taking a request or a response writer in server/; the check looks in the wrong place", handlers)
	}
}

// takesHTTP reports whether fn has a parameter of type http.ResponseWriter
// or *http.Request.
func takesHTTP(fn *ast.FuncDecl) bool {
	for _, p := range fn.Type.Params.List {
		typ := p.Type
		if star, ok := typ.(*ast.StarExpr); ok {
			typ = star.X
		}
		if sel, ok := typ.(*ast.SelectorExpr); ok {
			if x, ok := sel.X.(*ast.Ident); ok && x.Name == "http" && (sel.Sel.Name == "ResponseWriter" || sel.Sel.Name == "Request") {
				return true
			}
		}
	}
	return false
}

func goListDeps(t *testing.T, pkg string) map[string]bool {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
	}
	deps := map[string]bool{}
	for _, l := range strings.Fields(string(out)) {
		deps[l] = true
	}
	return deps
}

// TestNothingBranchesOnLegKind: a leg (internal/leg) is a raw stream or a
// WebSocket, and only internal/leg knows which. Its API gives no way to
// tell (its Conn has no exported fields; no exported function returns a
// *websocket.Conn or *net.TCPConn), and this scan of every hand-written
// Go file that imports it proves no code outside branches on the kind:
// no comparison or switch on Kind() or the Kind names (which are for logs
// and metrics), no type assertion to a transport, and the one door to the
// transports, Conn.Carry (a visitor framing each kind its own way), used
// only by internal/resume's links.
func TestNothingBranchesOnLegKind(t *testing.T) {
	t.Parallel()
	root := "../../.."
	fset := token.NewFileSet()
	var bad []string
	scanned := 0
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			switch {
			case rel == ".":
			case rel == filepath.Join("internal", "leg"), strings.HasPrefix(d.Name(), "."), d.Name() == "testdata", d.Name() == "node_modules":
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		scanned++
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		bad = append(bad, legKindBranches(fset, f, filepath.ToSlash(rel))...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if scanned < 100 {
		t.Fatalf("scanned %d files; the walk missed the module", scanned)
	}
	for _, b := range bad {
		t.Errorf("%s: only internal/leg may branch on the kind of a leg; ask the leg to do it", b)
	}
	names, err := filepath.Glob(filepath.Join(root, "internal", "leg", "*.go"))
	if err != nil || len(names) == 0 {
		t.Fatalf("internal/leg's files: %v, %v", names, err)
	}
	var api []*ast.File
	for _, n := range names {
		if strings.HasSuffix(n, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, n, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		api = append(api, f)
	}
	for _, b := range legAPILeaks(fset, api) {
		t.Errorf("%s: internal/leg's API must not reveal a leg's transport", b)
	}
}

// TestLegKindRuleCatches: the scan above finds each kind of branch.
func TestLegKindRuleCatches(t *testing.T) {
	t.Parallel()
	const head = "package p\nimport (\n\"net\"\n\"github.com/coder/websocket\"\n\"github.com/converge-ci/converge/internal/leg\"\n)\n"
	for _, tc := range []struct {
		name, src string
		bad       int
	}{
		{"logs and metrics only", "func f(c *leg.Conn) { log(c.Kind()); names := []string{leg.KindRaw, leg.KindWebSocket}; _ = names }", 0},
		{"compare Kind", "func f(c *leg.Conn) bool { return c.Kind() == leg.KindRaw }", 1},
		{"compare a name", "func f(k string) bool { return k != leg.KindWebSocket }", 1},
		{"switch on Kind", "func f(c *leg.Conn) { switch c.Kind() { case \"raw\": } }", 1},
		{"assert the transport", "func f(c *leg.Conn) bool { _, ok := c.Relayed(nil).(*net.TCPConn); return ok }", 1},
		{"type switch", "func f(x any) { switch x.(type) { case *websocket.Conn: } }", 1},
		{"visit the transports", "func f(c *leg.Conn, v leg.Framings) { c.Carry(v) }", 1},
	} {
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, "p.go", head+tc.src, parser.SkipObjectResolution)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := legKindBranches(fset, f, "server/p.go"); len(got) != tc.bad {
			t.Errorf("%s: %q found %v, want %d", tc.name, tc.src, got, tc.bad)
		}
	}
	f, _ := parser.ParseFile(token.NewFileSet(), "p.go", "package p\nimport \"net\"\ntype Conn struct{ Raw net.Conn }\nfunc (Conn) WS() *websocket.Conn { return nil }", parser.SkipObjectResolution)
	if got := legAPILeaks(token.NewFileSet(), []*ast.File{f}); len(got) != 2 {
		t.Errorf("a leaky leg API: found %v, want the exported field and the method", got)
	}
}

// legKindBranches returns where f, at path, branches on the kind of a
// leg. Only files that import internal/leg are looked at: they are the
// ones holding legs (other code asserts *net.TCPConn on its own sockets).
func legKindBranches(fset *token.FileSet, f *ast.File, path string) []string {
	legName := ""
	for _, im := range f.Imports {
		if strings.Trim(im.Path.Value, `"`) == "github.com/converge-ci/converge/internal/leg" {
			legName = "leg"
			if im.Name != nil {
				legName = im.Name.Name
			}
		}
	}
	if legName == "" {
		return nil
	}
	isKind := func(e ast.Expr) bool {
		switch e := ast.Unparen(e).(type) {
		case *ast.CallExpr:
			s, ok := e.Fun.(*ast.SelectorExpr)
			return ok && s.Sel.Name == "Kind" && len(e.Args) == 0
		case *ast.SelectorExpr:
			x, ok := e.X.(*ast.Ident)
			return ok && x.Name == legName && strings.HasPrefix(e.Sel.Name, "Kind")
		}
		return false
	}
	isTransport := func(e ast.Expr) bool {
		s, ok := e.(*ast.StarExpr)
		if !ok {
			return false
		}
		sel, ok := s.X.(*ast.SelectorExpr)
		if !ok {
			return false
		}
		x, ok := sel.X.(*ast.Ident)
		return ok && (x.Name == "websocket" && sel.Sel.Name == "Conn" || x.Name == "net" && sel.Sel.Name == "TCPConn")
	}
	var bad []string
	report := func(n ast.Node, what string) {
		p := fset.Position(n.Pos())
		bad = append(bad, fmt.Sprintf("%s:%d: %s", path, p.Line, what))
	}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.BinaryExpr:
			if (n.Op == token.EQL || n.Op == token.NEQ) && (isKind(n.X) || isKind(n.Y)) {
				report(n, "compares the kind of a leg")
			}
		case *ast.SwitchStmt:
			if n.Tag != nil && isKind(n.Tag) {
				report(n, "switches on the kind of a leg")
			}
		case *ast.TypeAssertExpr:
			if n.Type != nil && isTransport(n.Type) {
				report(n, "asserts a leg's transport")
			}
		case *ast.TypeSwitchStmt:
			for _, c := range n.Body.List {
				for _, e := range c.(*ast.CaseClause).List {
					if isTransport(e) {
						report(e, "switches on a leg's transport")
					}
				}
			}
		case *ast.CallExpr:
			if s, ok := n.Fun.(*ast.SelectorExpr); ok && s.Sel.Name == "Carry" && !strings.HasPrefix(path, "internal/resume/") {
				report(n, "visits a leg's transports (only internal/resume's links may)")
			}
		}
		return true
	})
	return bad
}

// legAPILeaks returns the exported parts of internal/leg, given as its
// files, that reveal a leg's transport: exported fields of Conn, and
// exported functions returning a *websocket.Conn or *net.TCPConn.
func legAPILeaks(fset *token.FileSet, files []*ast.File) []string {
	var bad []string
	for _, f := range files {
		for _, d := range f.Decls {
			switch d := d.(type) {
			case *ast.GenDecl:
				for _, s := range d.Specs {
					ts, ok := s.(*ast.TypeSpec)
					if !ok || ts.Name.Name != "Conn" {
						continue
					}
					st, ok := ts.Type.(*ast.StructType)
					if !ok {
						continue
					}
					for _, fl := range st.Fields.List {
						for _, n := range fl.Names {
							if n.IsExported() {
								bad = append(bad, fmt.Sprintf("%s: Conn has the exported field %s", fset.Position(n.Pos()), n.Name))
							}
						}
					}
				}
			case *ast.FuncDecl:
				if !d.Name.IsExported() || d.Type.Results == nil {
					continue
				}
				for _, r := range d.Type.Results.List {
					if s := types.ExprString(r.Type); s == "*websocket.Conn" || s == "*net.TCPConn" {
						bad = append(bad, fmt.Sprintf("%s: %s returns %s", fset.Position(d.Pos()), d.Name.Name, s))
					}
				}
			}
		}
	}
	return bad
}
