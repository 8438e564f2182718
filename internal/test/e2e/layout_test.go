package e2e

import (
	"go/ast"
	"go/parser"
	"go/token"
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
	} {
		if deps[banned] {
			t.Errorf("cmd/converge links %s; the server must stay a bit pipe", banned)
		}
	}
}

// TestImportsFlowOneWay: the agent and the client tools (the browser
// terminal's included) never import the server, and the server never
// imports them; the agent's lifetime never
// imports the agent (the agent imports it).
func TestImportsFlowOneWay(t *testing.T) {
	t.Parallel()
	for pkg, banned := range map[string][]string{
		"../../../agent":          {"github.com/converge-ci/converge/server", "github.com/converge-ci/converge/wsproxy"},
		"../../../agent/lifetime": {"github.com/converge-ci/converge/agent", "github.com/converge-ci/converge/server", "github.com/converge-ci/converge/wsproxy"},
		"../../../wsproxy":        {"github.com/converge-ci/converge/server", "github.com/converge-ci/converge/agent"},
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
