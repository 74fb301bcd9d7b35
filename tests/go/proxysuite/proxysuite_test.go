// Package proxysuite runs containerd's own snapshotter conformance suite
// (snapshots/testsuite.SnapshotterSuite) against a real `snapfs serve`, reached
// through containerd's proxy snapshotter client -- the same code path containerd
// uses for a `[proxy_plugins]` snapshotter.
//
// Every case gets a fresh daemon on a fresh root (the suite runs cases in
// parallel, each with its own temp dir); the case's cleanup stops that daemon by
// its PID (SIGTERM, then SIGKILL after a grace period) and lazily unmounts
// anything the daemon left mounted under the case's root.
//
// Build and run with scripts/go-suite (GOPATH mode, Debian's Go packages only).
// Environment: SNAPFS_BIN is the snapfs executable (default: snapfs on PATH).
package proxysuite

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/log"
	"github.com/containerd/containerd/pkg/testutil"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/containerd/containerd/snapshots/testsuite"
	"google.golang.org/grpc"
)

const (
	// The name containerd would know the plugin by (the [proxy_plugins.<name>] section).
	snapshotterName = "snapfs"
	// Generous: a loaded 2-core box; the daemon is normally ready in about a second.
	startTimeout = 60 * time.Second
	stopTimeout  = 20 * time.Second
	// sun_path is 108 bytes including the terminating NUL.
	maxSocketPath = 107
)

func TestSnapfsProxy(t *testing.T) {
	testutil.RequiresRoot(t)
	testsuite.SnapshotterSuite(t, "snapfs", newSnapfs)
}

// lockedBuffer collects the daemon's output; exec copies into it from its own goroutine.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func snapfsBinary() string {
	if bin := os.Getenv("SNAPFS_BIN"); bin != "" {
		return bin
	}
	return "snapfs"
}

// newSnapfs is the suite's SnapshotterFunc: one `snapfs serve` per case.
func newSnapfs(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
	sock := filepath.Join(root, "s.sock")
	if len(sock) > maxSocketPath {
		return nil, nil, fmt.Errorf("socket path %q is longer than a unix socket allows (set TMPDIR shorter)", sock)
	}
	out := &lockedBuffer{}
	cmd := exec.Command(snapfsBinary(), "serve",
		"--root", filepath.Join(root, "snapfs"),
		"--state", filepath.Join(root, "state"),
		"--address", sock,
		"--metrics-address", "",
		"--log-level", "debug",
	)
	cmd.Stdout = out
	cmd.Stderr = out
	// If this test binary dies without running cleanups (a -test.timeout panic, a kill),
	// the kernel stops the daemon for us rather than leaving it serving a deleted root.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start %s serve: %w", snapfsBinary(), err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	stop := func() error {
		return stopDaemon(ctx, cmd, exited, root, out)
	}

	if err := waitForSocket(sock, exited); err != nil {
		_ = stop()
		return nil, nil, fmt.Errorf("snapfs serve on %s: %w\n%s", sock, err, out.String())
	}

	conn, err := grpc.Dial("unix://"+sock,
		grpc.WithInsecure(),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", strings.TrimPrefix(addr, "unix://"))
		}),
	)
	if err != nil {
		_ = stop()
		return nil, nil, fmt.Errorf("dial %s: %w", sock, err)
	}
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), snapshotterName)
	cleanup := func() error {
		// Close the proxy first (a no-op for the proxy) so that the daemon sees the
		// client go away before it is asked to stop.
		return firstError(sn.Close(), conn.Close(), stop())
	}
	return sn, cleanup, nil
}

// firstError is errors.Join for Go 1.19 (Debian bookworm's): the first non-nil error.
func firstError(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// waitForSocket polls until the daemon accepts connections, or it exits, or time runs out.
func waitForSocket(sock string, exited <-chan error) error {
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("daemon exited before listening: %v", err)
		default:
		}
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("not accepting connections after %s", startTimeout)
}

// stopDaemon stops the daemon we started, by its PID, and reports a dirty stop as an error:
// a daemon that has to be killed, or exits non-zero on SIGTERM, is a bug the suite should show.
func stopDaemon(ctx context.Context, cmd *exec.Cmd, exited <-chan error, root string, out *lockedBuffer) error {
	var result error
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		result = fmt.Errorf("SIGTERM pid %d: %w", cmd.Process.Pid, err)
	}
	select {
	case err := <-exited:
		if err != nil && result == nil {
			result = fmt.Errorf("snapfs serve (pid %d) exited on SIGTERM: %v", cmd.Process.Pid, err)
		}
	case <-time.After(stopTimeout):
		_ = cmd.Process.Kill()
		<-exited
		result = fmt.Errorf("snapfs serve (pid %d) ignored SIGTERM for %s; killed", cmd.Process.Pid, stopTimeout)
	}
	// The suite removes its temp dir next; never let it walk into a mount.
	if left := unmountUnder(root); len(left) > 0 && result == nil {
		result = fmt.Errorf("snapfs serve left mounts under %s: %s", root, strings.Join(left, ", "))
	}
	if result != nil {
		result = fmt.Errorf("%w\nsnapfs serve output:\n%s", result, out.String())
	} else {
		log.G(ctx).Debugf("snapfs serve output:\n%s", out.String())
	}
	return result
}

// unmountUnder lazily unmounts every mount point at or below root (deepest first), returning them.
func unmountUnder(root string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var found []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if mp == root || strings.HasPrefix(mp, root+"/") {
			found = append(found, mp)
		}
	}
	sort.Slice(found, func(i, j int) bool { return len(found[i]) > len(found[j]) })
	for _, mp := range found {
		_ = syscall.Unmount(mp, syscall.MNT_DETACH)
	}
	return found
}

// unescapeMountinfo undoes the octal escapes (\040 etc.) of /proc/self/mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
