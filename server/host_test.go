package server

import (
	"bufio"
	"html"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// rawGet sends request (a whole HTTP/1.x request head) to addr as is, so
// that it can carry a Host header no Go client would send, and returns the
// status and the whole response.
func rawGet(t *testing.T, addr, request string) (int, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, request); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(string(b))), nil)
	if err != nil {
		t.Fatalf("%q: %v\n%s", request, err, b)
	}
	resp.Body.Close()
	return resp.StatusCode, string(b)
}

// TestHostHeaderNeverReflected: the recipes show the Host a user reached
// the server by only when it looks like a host. Anything else is never
// rendered, raw or escaped: Go's HTTP server refuses some of it (400), and
// for the rest the pages fall back to the address the connection reached.
func TestHostHeaderNeverReflected(t *testing.T) {
	r := runServer(t)
	for _, tc := range []struct {
		host string
		want int
	}{
		{`relay$(touch${IFS}pwned)`, http.StatusBadRequest}, // braces: refused by net/http
		{`relay$(id)`, http.StatusOK},
		{`relay;id&x=1`, http.StatusOK},
		{`relay'!*+,=~`, http.StatusOK},
		{`relay%0aecho`, http.StatusOK},
		{`"quoted"`, http.StatusBadRequest},
		{`with space`, http.StatusBadRequest},
		{`<script>alert(1)</script>`, http.StatusBadRequest},
	} {
		for _, path := range []string{"/?id=job-42", "/downloads"} {
			code, resp := rawGet(t, r.addr, "GET "+path+" HTTP/1.1\r\nHost: "+tc.host+"\r\nConnection: close\r\n\r\n")
			if code != tc.want {
				t.Errorf("GET %s with Host %q: status %d, want %d", path, tc.host, code, tc.want)
			}
			if strings.Contains(resp, tc.host) || strings.Contains(resp, html.EscapeString(tc.host)) {
				i := max(strings.Index(resp, tc.host), strings.Index(resp, html.EscapeString(tc.host)))
				t.Errorf("GET %s with Host %q: the response shows it: …%s…", path, tc.host, resp[max(i-40, 0):min(i+40+len(tc.host), len(resp))])
			}
			if code == http.StatusOK && path == "/?id=job-42" {
				if got := recipe(t, resp, "ci-linux"); !strings.Contains(got, "http://"+r.addr+"/static/agent") {
					t.Errorf("Host %q: recipe %q, want the address the connection reached, %s", tc.host, got, r.addr)
				}
			}
		}
	}
	// HTTP/1.0 needs no Host: the recipes still name a reachable address.
	code, resp := rawGet(t, r.addr, "GET /?id=job-42 HTTP/1.0\r\n\r\n")
	if code != http.StatusOK {
		t.Fatalf("HTTP/1.0 without Host: status %d", code)
	}
	if got := recipe(t, resp, "ci-linux"); !strings.HasSuffix(got, "\n.converge/agent --id job-42 ws://"+r.addr) {
		t.Errorf("HTTP/1.0 without Host: recipe %q, want ws://%s", got, r.addr)
	}
}
