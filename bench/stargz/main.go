// Command containerd-stargz-grpc, as the benchmark builds it. Debian ships stargz-snapshotter's
// library (golang-github-containerd-stargz-snapshotter-dev) but not this daemon, and its
// `service` package cannot be built from Debian's sources (it needs k8s.io/cri-api, which
// Debian does not package), so this wires the same pieces the upstream daemon does, minus
// the CRI and kubeconfig keychains:
//
//   - a TOML config in stargz-snapshotter's format (optional; defaults otherwise),
//   - the stargz filesystem (fs) with layer sources from the labels `ctr-remote image rpull`
//     sets, registry hosts without credentials, plain HTTP for localhost/127.0.0.1,
//   - the overlay-based remote snapshotter (snapshot) over it,
//   - containerd's snapshots gRPC API on a unix socket.
//
// SIGINT or SIGTERM stops serving, closes the snapshotter (unmounting its layers) and exits.
package main

import (
	"context"
	"flag"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/BurntSushi/toml"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/containerd/log"
	"github.com/containerd/containerd/reference"
	"github.com/containerd/containerd/remotes/docker"
	stargzfs "github.com/containerd/stargz-snapshotter/fs"
	"github.com/containerd/stargz-snapshotter/fs/config"
	"github.com/containerd/stargz-snapshotter/fs/source"
	snbase "github.com/containerd/stargz-snapshotter/snapshot"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
)

// hosts resolves every registry to itself, anonymously; loopback registries over plain HTTP.
func hosts(ref reference.Spec) ([]docker.RegistryHost, error) {
	host := ref.Hostname()
	h := docker.RegistryHost{
		Client:       &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()},
		Host:         host,
		Scheme:       "https",
		Path:         "/v2",
		Capabilities: docker.HostCapabilityPull | docker.HostCapabilityResolve,
	}
	if local, _ := docker.MatchLocalhost(host); local {
		h.Scheme = "http"
	}
	return []docker.RegistryHost{h}, nil
}

func main() {
	address := flag.String("address", "/run/containerd-stargz-grpc/containerd-stargz-grpc.sock", "unix socket to serve on")
	configPath := flag.String("config", "", "TOML config (stargz-snapshotter's fs options); empty: defaults")
	rootDir := flag.String("root", "/var/lib/containerd-stargz-grpc", "state directory")
	logLevel := flag.String("log-level", "info", "logrus level")
	flag.Parse()

	lvl, err := logrus.ParseLevel(*logLevel)
	if err != nil {
		logrus.WithError(err).Fatal("bad -log-level")
	}
	logrus.SetLevel(lvl)
	ctx := log.WithLogger(context.Background(), log.L)

	var cfg config.Config
	if *configPath != "" {
		if _, err := toml.DecodeFile(*configPath, &cfg); err != nil {
			log.G(ctx).WithError(err).Fatalf("config %q", *configPath)
		}
	}
	fs, err := stargzfs.NewFilesystem(filepath.Join(*rootDir, "stargz"), cfg,
		stargzfs.WithGetSources(source.FromDefaultLabels(hosts)))
	if err != nil {
		log.G(ctx).WithError(err).Fatal("stargz filesystem")
	}
	sn, err := snbase.NewSnapshotter(ctx, filepath.Join(*rootDir, "snapshotter"), fs, snbase.AsynchronousRemove)
	if err != nil {
		log.G(ctx).WithError(err).Fatal("snapshotter")
	}

	if err := os.MkdirAll(filepath.Dir(*address), 0o700); err != nil {
		log.G(ctx).WithError(err).Fatal("socket directory")
	}
	if err := os.RemoveAll(*address); err != nil {
		log.G(ctx).WithError(err).Fatal("stale socket")
	}
	l, err := net.Listen("unix", *address)
	if err != nil {
		log.G(ctx).WithError(err).Fatalf("listen on %q", *address)
	}
	rpc := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(rpc, snapshotservice.FromSnapshotter(sn))
	go func() {
		if err := rpc.Serve(l); err != nil {
			log.G(ctx).WithError(err).Fatal("serve")
		}
	}()

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	<-sig
	rpc.Stop()
	if err := sn.Close(); err != nil {
		log.G(ctx).WithError(err).Warn("closing the snapshotter")
	}
	log.G(ctx).Info("exiting")
}
