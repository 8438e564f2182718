package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"html"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/converge-ci/converge/internal/test/sshtest"
	"github.com/converge-ci/converge/server"
)

// nginxPath finds nginx. CI installs Debian's nginx-light (.ci/run), so a
// missing nginx fails the test rather than skipping it.
func nginxPath(t *testing.T) string {
	t.Helper()
	for _, p := range []string{os.Getenv("CONVERGE_TEST_NGINX"), "/usr/sbin/nginx"} {
		if p != "" {
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
	}
	if p, err := exec.LookPath("nginx"); err == nil {
		return p
	}
	t.Fatal("nginx not found: install Debian's nginx-light package (apt-get install nginx-light), as .ci/run does")
	return ""
}

// startNginx runs nginx with the shipped deploy/nginx-converge.conf in
// front of upstream (host:port), as the test's user with its prefix, pid
// and logs in a temporary directory, until the test ends. It listens on
// a 127.0.0.1 port handed over as an open socket (nginx's NGINX
// variable), and returns its address.
func startNginx(t *testing.T, upstream string) string {
	t.Helper()
	exe := nginxPath(t)
	snippet, err := os.ReadFile("../../../deploy/nginx-converge.conf")
	if err != nil {
		t.Fatal(err)
	}
	const placeholder = "proxy_pass http://127.0.0.1:8000/;"
	if n := bytes.Count(snippet, []byte(placeholder)); n != 1 {
		t.Fatalf("deploy/nginx-converge.conf has %q %d times, want once", placeholder, n)
	}
	snippet = bytes.Replace(snippet, []byte(placeholder), []byte("proxy_pass http://"+upstream+"/;"), 1)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sock, err := ln.(*net.TCPListener).File()
	ln.Close() // sock is its own descriptor of the listening socket
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	addr := ln.Addr().String()

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "converge.conf"), snippet, 0o644); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(nginxConf(t, dir, addr)), 0o644); err != nil {
		t.Fatal(err)
	}
	errLog := filepath.Join(dir, "error.log")
	cmd := exec.Command(exe, "-p", dir+"/", "-c", conf, "-e", errLog, "-g", "daemon off;")
	cmd.ExtraFiles = []*os.File{sock} // descriptor 3
	cmd.Env = append(os.Environ(), "NGINX=3;")
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM) // fast shutdown: WebSockets need not end first
		<-done
		if t.Failed() {
			b, _ := os.ReadFile(errLog)
			t.Logf("nginx output:\n%s\nnginx error log:\n%s", out, b)
		}
	})
	waitFor(t, "nginx to answer", func() bool {
		select {
		case <-done:
			b, _ := os.ReadFile(errLog)
			t.Fatalf("nginx exited: %s\n%s\n%s", cmd.ProcessState, out, b)
		default:
		}
		resp, err := http.Get("http://" + addr + "/converge/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return addr
}

// nginxConf is a whole nginx configuration around the shipped snippet in
// dir: every path nginx writes is in dir, since the built-in ones (Debian:
// /var/lib/nginx, /run/nginx.pid) are root's. Run as root, the workers
// are told to stay root's too; otherwise nginx cannot switch users and
// there is no user directive to warn about.
func nginxConf(t *testing.T, dir, addr string) string {
	t.Helper()
	who := ""
	if os.Geteuid() == 0 {
		u, err := user.Current()
		if err != nil {
			t.Fatal(err)
		}
		g, err := user.LookupGroupId(u.Gid)
		if err != nil {
			t.Fatal(err)
		}
		who = fmt.Sprintf("user %s %s;\n", u.Username, g.Name)
	}
	return who + fmt.Sprintf(`worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log info;
events { worker_connections 256; }
http {
    access_log %[1]s/access.log;
    client_body_temp_path %[1]s/client_body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    server {
        listen %[2]s;
        include %[1]s/converge.conf;
    }
}
`, dir, addr)
}

// TestNginxSubPath puts the server behind a real nginx under /converge/
// with the shipped configuration, which strips the prefix and says so
// with X-Forwarded-Prefix: an agent given the public URL registers, ssh
// and sftp reach it with the usage page's own ProxyCommand, the download
// links work, and the sessions view runs live in a browser.
func TestNginxSubPath(t *testing.T) {
	t.Parallel()
	const id, password = "nginx-job", "sub-path"
	dist := t.TempDir()
	download := "wsproxy-linux-" + runtime.GOARCH
	copyFile(t, bin("wsproxy"), filepath.Join(dist, download))
	r := startServer(t, func(c *server.Config) {
		c.TrustedProxies = []string{"127.0.0.1"}
		c.SessionsPassword = password
		c.Dist = os.DirFS(dist)
	})
	front := startNginx(t, r.Addr)
	pub, wsPub := "http://"+front+"/converge", "ws://"+front+"/converge"

	c := sshtest.New(t)
	a := startAgent(t, &relay{URL: wsPub, User: r.User}, id, c)
	if out := a.Out.String(); !strings.Contains(out, `wsproxy `+wsPub+`/client/`+id+`"`) {
		t.Errorf("the agent's instructions do not connect through %s:\n%s", wsPub, out)
	}

	// The usage page through nginx: every URL a user copies is under
	// /converge, and its ProxyCommand reaches the agent.
	page := fetch(t, pub+"/?id="+id)
	for rid, want := range map[string]string{
		"ci-linux":           "-o .converge/agent " + pub + "/static/agent\nchmod +x .converge/agent\n.converge/agent --id " + id + " " + wsPub,
		"get-wsproxy":        pub + "/static/wsproxy",
		"ssh-config-snippet": "ProxyCommand wsproxy " + wsPub + "/client/%n\n",
	} {
		if got := pageRecipe(t, page, rid); !strings.Contains(got, want) {
			t.Errorf("recipe %s = %q, want it to contain %q", rid, got, want)
		}
	}
	m := regexp.MustCompile(`-oProxyCommand="wsproxy (\S+)"`).FindStringSubmatch(pageRecipe(t, page, "ssh-cmd"))
	if m == nil || m[1] != wsPub+"/client/"+id {
		t.Fatalf("ssh recipe %q, want wsproxy %s/client/%s", pageRecipe(t, page, "ssh-cmd"), wsPub, id)
	}
	tgt := sshtest.Target{User: r.User, Alias: id, ProxyCommand: bin("wsproxy") + " " + m[1]}
	if res := c.SSH(tgt, 0, "echo through-nginx"); !strings.Contains(res.Stdout, "through-nginx") {
		t.Errorf("ssh through nginx: %q", res.Stdout)
	}
	payload := bytes.Repeat([]byte("sub-path "), 1<<17)
	local, back := filepath.Join(t.TempDir(), "up.bin"), filepath.Join(t.TempDir(), "back.bin")
	if err := os.WriteFile(local, payload, 0o600); err != nil {
		t.Fatal(err)
	}
	if res := c.Run("sftp", tgt, fmt.Sprintf("put %s up.bin\nget up.bin %s\n", local, back), "-b", "-", tgt.Dest()); res.Code != 0 {
		t.Fatalf("sftp through nginx: exit %d\n%s%s", res.Code, res.Stdout, res.Stderr)
	}
	if got, err := os.ReadFile(back); err != nil || !bytes.Equal(got, payload) {
		t.Errorf("sftp through nginx: got %d bytes back (%v), want %d", len(got), err, len(payload))
	}

	// The download, by the link on the downloads page.
	link := pub + "/static/dist/" + download
	if !strings.Contains(fetch(t, pub+"/downloads"), `href="`+link+`"`) {
		t.Errorf("downloads page does not link %s", link)
	}
	want, err := os.ReadFile(bin("wsproxy"))
	if err != nil {
		t.Fatal(err)
	}
	if got := fetch(t, link); got != string(want) {
		t.Errorf("GET %s: %d bytes, want the %d of wsproxy", link, len(got), len(want))
	}

	checkSessionsPage(t, pub, password, id)
}

// pageRecipe is the text of the <pre id=id> block of a page.
func pageRecipe(t *testing.T, page, id string) string {
	t.Helper()
	m := regexp.MustCompile(`(?s)<pre id="` + regexp.QuoteMeta(id) + `"><code>(.*?)</code></pre>`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("page has no recipe %q", id)
	}
	return html.UnescapeString(m[1])
}

// checkSessionsPage opens the sessions view at base in a browser: its
// style sheet and script load from under base, and its event stream
// connects and lists the agent id.
func checkSessionsPage(t *testing.T, base, password, id string) {
	t.Helper()
	ctx := browser(t)
	auth := "Basic " + base64.StdEncoding.EncodeToString([]byte("anyone:"+password))
	do(t, ctx, "sessions page under "+base,
		chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			if _, err := cdp.Call(ctx, tg, network.Enable, network.EnableParams{}); err != nil {
				return err
			}
			_, err := cdp.Call(ctx, tg, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{Headers: network.Headers{"Authorization": auth}})
			return err
		}),
		chromedp.Navigate(base+"/sessions"),
		chromedp.WaitVisible(chromedp.CSS(`#live[data-state="open"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#agents tr[data-id="`+id+`"]`)),
	)
	styled := get(t, ctx, "the style sheet applies",
		chromedp.Evaluate[bool](`document.styleSheets.length > 0 && document.styleSheets[0].cssRules.length > 0`))
	if !styled {
		t.Errorf("the sessions page under %s has no style sheet", base)
	}
}
