package deploytest

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestContainerImage builds the Containerfile's image with podman and runs
// the server from it.
//
// What this machine allows decides how: base images cannot be pulled
// (no registry is reachable) and podman may not run containers (crun is
// refused setrlimit here). So the test keeps the Containerfile's last
// stage as it is and builds it on a build stage of its own, FROM scratch,
// that puts the same files at the same paths: a static converge built
// with go build, the agent for this machine embedded as `make dist` would
// (through -overlay), and the host's CA certificates. It then exports the
// image's root filesystem and runs the image's entrypoint from it as the
// image's user, with the image's environment and CONVERGE_* variables,
// and runs the image's HEALTHCHECK command the same way.
//
// Skipped only when podman is missing and CONVERGE_TEST_PODMAN is unset;
// .ci/run installs podman and sets it.
func TestContainerImage(t *testing.T) {
	if _, err := exec.LookPath("podman"); err != nil {
		if os.Getenv("CONVERGE_TEST_PODMAN") == "" {
			t.Skip("podman is not installed; CI installs it and sets CONVERGE_TEST_PODMAN=1, which makes its absence a failure")
		}
		t.Fatalf("CONVERGE_TEST_PODMAN is set but podman is not installed: %v", err)
	}
	ctxDir := imageContext(t)
	tag := "localhost/converge-deploytest:" + strconv.FormatInt(time.Now().UnixNano(), 36)
	// docker format keeps the HEALTHCHECK; without layers no untagged image
	// of the build stage is left behind.
	podman(t, "build", "--format", "docker", "--layers=false", "--quiet", "-t", tag, "-f", filepath.Join(ctxDir, "Containerfile"), ctxDir)
	t.Cleanup(func() { podmanQuiet("rmi", "--force", tag) })

	img := inspectImage(t, tag)
	imgUID, imgGID := checkImageConfig(t, img)
	root := exportImage(t, tag)
	if passwd, err := os.ReadFile(filepath.Join(root, "etc", "passwd")); err != nil ||
		!regexp.MustCompile(`(?m)^converge:x:`+strconv.Itoa(imgUID)+`:`).Match(passwd) {
		t.Errorf("/etc/passwd in the image: %v\n%s", err, passwd)
	}
	// Only root can start a program as another user; anyone else runs it
	// as themselves, which is no root either.
	uid, gid := imgUID, imgGID
	if os.Getuid() != 0 {
		uid, gid = os.Getuid(), os.Getgid()
	}

	stateDir := checkStateDir(t, root, img, imgUID)
	srv := runFromImage(t, root, img, uid, gid, img.Config.Entrypoint,
		"CONVERGE_ADDR=127.0.0.1:0", "CONVERGE_SSH_USER=imguser",
		"CONVERGE_STATE_DIR="+stateDir) // the image's, inside the exported root
	var addr string
	waitFor(t, "the server in the image to listen", func() bool {
		if srv.exited() {
			t.Fatalf("the server in the image exited: %v\n%s", srv.err, srv.out)
		}
		m := regexp.MustCompile(`msg=listening .*addr=(127\.0\.0\.1:\d+)`).FindStringSubmatch(srv.out.String())
		if m != nil {
			addr = m[1]
		}
		return m != nil
	})
	checkRunsAs(t, srv.cmd.Process.Pid, uid)
	base := "http://" + addr
	if got := get(t, base+"/healthz"); strings.TrimSpace(got) != "ok" {
		t.Errorf("/healthz: %q", got)
	}
	if got := get(t, base+"/"); !strings.Contains(got, "imguser@localhost") {
		t.Errorf("the usage page does not use CONVERGE_SSH_USER=imguser")
	}
	agent, err := os.ReadFile(bin("agent"))
	if err != nil {
		t.Fatal(err)
	}
	if got := get(t, base+"/static/dist/"+hostAgent); got != string(agent) {
		t.Errorf("/static/dist/%s: %d bytes, want the embedded agent's %d", hostAgent, len(got), len(agent))
	}

	health := img.Healthcheck.Test
	if len(health) < 2 || health[0] != "CMD" {
		t.Fatalf("HEALTHCHECK %q: want the exec form, CMD [...]", health)
	}
	check := func() error {
		p := runFromImage(t, root, img, uid, gid, health[1:], "CONVERGE_ADDR="+addr)
		return p.wait(t)
	}
	if err := check(); err != nil {
		t.Errorf("the health check failed while the server runs: %v", err)
	}
	srv.cmd.Process.Signal(syscall.SIGTERM)
	if err := srv.wait(t); err != nil {
		t.Errorf("the server in the image after SIGTERM: %v\n%s", err, srv.out)
	}
	if err := check(); err == nil {
		t.Errorf("the health check passed with the server stopped")
	}
}

// checkStateDir checks that the image names a state directory that its
// user owns, and returns that directory inside the exported root.
func checkStateDir(t *testing.T, root string, img image, uid int) string {
	t.Helper()
	var dir string
	for _, e := range img.Config.Env {
		if v, ok := strings.CutPrefix(e, "CONVERGE_STATE_DIR="); ok {
			dir = v
		}
	}
	if !filepath.IsAbs(dir) {
		t.Fatalf("the image's environment %q: want CONVERGE_STATE_DIR, an absolute path", img.Config.Env)
	}
	inRoot := filepath.Join(root, dir)
	fi, err := os.Stat(inRoot)
	if err != nil {
		t.Fatalf("the image's state directory: %v", err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); os.Getuid() == 0 && (!ok || int(st.Uid) != uid) {
		t.Errorf("the image's state directory %s is not owned by the image's user %d", dir, uid)
	}
	return inRoot
}

// imageContext makes the build context: the Containerfile's last stage on
// a build stage that provides what it copies, and the files it copies
// from the context.
func imageContext(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "Containerfile"))
	if err != nil {
		t.Fatal(err)
	}
	file := string(b)
	last := strings.LastIndex(file, "\nFROM scratch\n")
	if last < 0 || !strings.Contains(file[:last], "RUN make dist") {
		t.Fatalf("the Containerfile should build with make dist and end with a stage FROM scratch:\n%s", file)
	}
	dir := t.TempDir()
	certs, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
	if err != nil {
		certs = []byte("# no CA certificates on the machine that ran the test\n")
	}
	write(t, filepath.Join(dir, "ca-certificates.crt"), certs)
	for _, f := range []string{"passwd", "group", "state/README.txt"} {
		b, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "container", f))
		if err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(dir, "deploy", "container", f), b)
	}
	write(t, filepath.Join(dir, "Containerfile"), []byte("FROM scratch AS build\n"+
		"COPY converge /src/bin/converge\n"+
		"COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt\n"+file[last:]))
	buildEmbedded(t, filepath.Join(dir, "converge"))
	return dir
}

// buildEmbedded builds a static converge with this machine's agent among
// its downloads, as `make dist` embeds them, without touching static/dist.
func buildEmbedded(t *testing.T, out string) {
	t.Helper()
	overlay, err := json.Marshal(map[string]map[string]string{"Replace": {
		filepath.Join(repoRoot, "static", "dist", hostAgent): bin("agent"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	ovl := filepath.Join(t.TempDir(), "overlay.json")
	write(t, ovl, overlay)
	cmd := exec.Command("go", "build", "-overlay", ovl, "-o", out, "./cmd/converge")
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build converge: %v\n%s", err, b)
	}
}

// image is what the tests read of `podman image inspect`.
type image struct {
	Config struct {
		User         string
		Env          []string
		Entrypoint   []string
		ExposedPorts map[string]any
	}
	Healthcheck struct{ Test []string }
}

func inspectImage(t *testing.T, tag string) image {
	t.Helper()
	var imgs []image
	if err := json.Unmarshal(podman(t, "image", "inspect", tag), &imgs); err != nil || len(imgs) != 1 {
		t.Fatalf("podman image inspect: %v (%d images)", err, len(imgs))
	}
	return imgs[0]
}

// checkImageConfig checks the image's user, port and entrypoint, and
// returns its user and group IDs.
func checkImageConfig(t *testing.T, img image) (uid, gid int) {
	t.Helper()
	u, g, ok := strings.Cut(img.Config.User, ":")
	uid, err1 := strconv.Atoi(u)
	gid, err2 := strconv.Atoi(g)
	if !ok || err1 != nil || err2 != nil || uid == 0 || gid == 0 {
		t.Fatalf("image user %q: want a numeric non-root UID:GID", img.Config.User)
	}
	if _, ok := img.Config.ExposedPorts["8000/tcp"]; !ok {
		t.Errorf("exposed ports %v: want 8000/tcp", img.Config.ExposedPorts)
	}
	if len(img.Config.Entrypoint) == 0 {
		t.Fatal("the image has no entrypoint")
	}
	return uid, gid
}

// exportImage writes the image's root filesystem into a directory that
// any user may enter, and returns it.
func exportImage(t *testing.T, tag string) string {
	t.Helper()
	id := strings.TrimSpace(string(podman(t, "create", "--no-healthcheck", tag)))
	t.Cleanup(func() { podmanQuiet("rm", "--force", id) })
	root, err := os.MkdirTemp("", "converge-image-root")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(bytes.NewReader(podman(t, "export", id)))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return root
		}
		if err != nil {
			t.Fatalf("podman export: %v", err)
		}
		path := filepath.Join(root, filepath.Clean("/"+h.Name))
		switch h.Typeflag {
		case tar.TypeDir:
			if err = os.MkdirAll(path, 0o755); err == nil && os.Getuid() == 0 {
				err = os.Lchown(path, h.Uid, h.Gid) // as root, keep the owners the image gives
			}
		case tar.TypeReg:
			var b []byte
			if b, err = io.ReadAll(tr); err == nil {
				write(t, path, b)
				err = os.Chmod(path, h.FileInfo().Mode().Perm())
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// runFromImage starts argv (absolute paths in the image) from the image's
// root filesystem, as uid:gid, with the image's environment and env.
func runFromImage(t *testing.T, root string, img image, uid, gid int, argv []string, env ...string) *proc {
	t.Helper()
	cmd := exec.Command(filepath.Join(root, argv[0]), argv[1:]...)
	cmd.Dir = root
	cmd.Env = append(append([]string{}, img.Config.Env...), env...)
	if uid != os.Getuid() {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	}
	return start(t, cmd)
}

// checkRunsAs checks the real and effective UID of process pid.
func checkRunsAs(t *testing.T, pid, uid int) {
	t.Helper()
	status, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^Uid:\s+(\d+)\s+(\d+)`).FindSubmatch(status)
	if m == nil || string(m[1]) != strconv.Itoa(uid) || string(m[2]) != strconv.Itoa(uid) {
		t.Errorf("the server runs as %q, want UID %d", m, uid)
	}
}

func podman(t *testing.T, args ...string) []byte {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command("podman", args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("podman %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out
}

// podmanQuiet runs podman for a cleanup, whose failure fails nothing.
func podmanQuiet(args ...string) { exec.Command("podman", args...).Run() }
