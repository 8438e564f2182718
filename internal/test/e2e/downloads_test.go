package e2e

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"debug/macho"
	"debug/pe"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"github.com/converge-ci/converge/server"
)

// TestDownloads serves real agent binaries for three platforms, as `make
// dist` would embed them, and checks what a user downloads: the checksum
// the page shows, the executable format and architecture, and that the
// Linux one runs.
func TestDownloads(t *testing.T) {
	t.Parallel()
	if runtime.GOOS != "linux" {
		t.Skip("the suite's agent binary is built for the host; this test expects Linux")
	}
	dist := t.TempDir()
	host := "agent-linux-" + runtime.GOARCH
	copyFile(t, bin("agent"), filepath.Join(dist, host))
	// Cross-compiled without -trimpath and with vet's environment, so the
	// dependencies compiled by `make vet` for these platforms are reused.
	for _, p := range []struct{ goos, goarch, name string }{
		{"darwin", "arm64", "agent-darwin-arm64"},
		{"windows", "amd64", "agent-windows-amd64.exe"},
	} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dist, p.name), "../../../cmd/agent")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+p.goos, "GOARCH="+p.goarch)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", p.name, err, out)
		}
	}
	r := startServer(t, func(c *server.Config) { c.Dist = os.DirFS(dist) })

	page := fetch(t, r.HTTP+"/downloads")
	shown := map[string]string{} // file name → SHA-256 on the page
	for _, m := range regexp.MustCompile(`(?s)<tr data-name="([^"]+)">.*?<td data-label="SHA-256" class="hash"><code>([0-9a-f]{64})</code>`).FindAllStringSubmatch(page, -1) {
		shown[m[1]] = m[2]
	}
	if len(shown) != 3 {
		t.Fatalf("downloads page lists %v, want the 3 agents", shown)
	}

	for _, tc := range []struct {
		path, file string
		check      func([]byte) error
	}{
		{"/static/dist/" + host, host, isELF},
		{"/static/dist/agent-darwin-arm64", "agent-darwin-arm64", isMachOArm64},
		{"/static/dist/agent-windows-amd64.exe", "agent-windows-amd64.exe", isPEAmd64},
		{"/static/agent.exe", "agent-windows-amd64.exe", isPEAmd64},
	} {
		body := []byte(fetch(t, r.HTTP+tc.path))
		got := sha256.Sum256(body)
		onDisk, err := os.ReadFile(filepath.Join(dist, tc.file))
		if err != nil {
			t.Fatal(err)
		}
		want := sha256.Sum256(onDisk)
		if got != want {
			t.Errorf("GET %s: SHA-256 %x, want %x (the built file)", tc.path, got, want)
		}
		if hex.EncodeToString(got[:]) != shown[tc.file] {
			t.Errorf("GET %s: SHA-256 %x, but the page shows %s", tc.path, got, shown[tc.file])
		}
		if err := tc.check(body); err != nil {
			t.Errorf("GET %s: %v", tc.path, err)
		}
	}

	// The recipe's way: download, chmod, run.
	if runtime.GOARCH == "amd64" {
		exe := filepath.Join(t.TempDir(), "agent")
		if err := os.WriteFile(exe, []byte(fetch(t, r.HTTP+"/static/agent")), 0o755); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(exe, "--version").CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), "agent ") {
			t.Errorf("downloaded agent --version: %v\n%s", err, out)
		}
	}
}

func isELF(b []byte) error {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return err
	}
	want := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[runtime.GOARCH]
	if f.Machine != want {
		return fmt.Errorf("ELF for %v, want %v", f.Machine, want)
	}
	return nil
}

func isMachOArm64(b []byte) error {
	f, err := macho.NewFile(bytes.NewReader(b))
	if err != nil {
		return err
	}
	if f.Cpu != macho.CpuArm64 {
		return fmt.Errorf("Mach-O for %v, want arm64", f.Cpu)
	}
	return nil
}

func isPEAmd64(b []byte) error {
	f, err := pe.NewFile(bytes.NewReader(b))
	if err != nil {
		return err
	}
	if f.Machine != pe.IMAGE_FILE_MACHINE_AMD64 {
		return fmt.Errorf("PE for machine %#x, want amd64", f.Machine)
	}
	return nil
}

func fetch(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s = %d\n%s", url, resp.StatusCode, b)
	}
	return string(b)
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}
