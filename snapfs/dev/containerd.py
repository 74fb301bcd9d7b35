"""The config of a private containerd 1.6 for tests and benchmarks: the one writer of it.

Its own root, state and sockets under ``base`` (short: socket paths must fit in 108 bytes),
snapfs attached as the proxy snapshotter ``snapfs`` when a socket is given. Without
``CriOptions`` the CRI plugin is disabled: tests and benchmarks talk to it with ``ctr`` in a
namespace of their own. With them, CRI is on and set up the way a Kubernetes node would use
snapfs (snapshotter, remote-snapshot labels, registry hosts from a certs.d directory), plus
what this machine needs for host-network pods without CNI (DESIGN §8). Must not start or stop
anything (the test fixture and the bench do, each stopping only its own PID).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROXY_NAME = "snapfs"
CRI_PLUGIN = "io.containerd.grpc.v1.cri"


@dataclass(frozen=True, slots=True)
class CriOptions:
    """The CRI plugin's settings that differ from containerd 1.6's defaults."""

    sandbox_image: str  # the pause image, pulled from the test registry (nothing downloads)
    config_path: Path  # certs.d: <host>/hosts.toml, read at every pull
    cni_dir: Path  # an empty bin/ and conf/ of our own: host-network pods need no CNI
    snapshotter: str = PROXY_NAME
    # containerd's default (true) sends no remote labels: every layer would be downloaded.
    disable_snapshot_annotations: bool = False
    # [proxy_plugins.snapfs.exports] root: kubelet's image-fs stats read it from 1.6.32 on;
    # older releases (1.6.20 here) accept and ignore it.
    exports_root: Path | None = None


def _cri_lines(cri: CriOptions) -> list[str]:
    section = f'plugins."{CRI_PLUGIN}"'
    annotations = "true" if cri.disable_snapshot_annotations else "false"
    return [
        f"[{section}]",
        f'  sandbox_image = "{cri.sandbox_image}"',
        # This machine withholds CAP_SYS_RESOURCE: the pause container's oom_score_adj of
        # -998 would fail unless clamped to our own.
        "  restrict_oom_score_adj = true",
        # Several test containerds run at once: a fixed stream port (10010) would collide.
        '  stream_server_address = "127.0.0.1"',
        '  stream_server_port = "0"',
        "  enable_selinux = false",
        f"[{section}.containerd]",
        f'  snapshotter = "{cri.snapshotter}"',
        f"  disable_snapshot_annotations = {annotations}",
        '  default_runtime_name = "runc"',
        f"[{section}.containerd.runtimes.runc]",
        '  runtime_type = "io.containerd.runc.v2"',
        f"[{section}.cni]",
        f'  bin_dir = "{cri.cni_dir}/bin"',
        f'  conf_dir = "{cri.cni_dir}/conf"',
        f"[{section}.registry]",
        f'  config_path = "{cri.config_path}"',
    ]


def containerd_config(base: Path, proxy_socket: str | None = None, *, level: str = "info",
                      eager_gc: bool = False, cri: CriOptions | None = None) -> str:
    """The TOML text. ``eager_gc`` makes the GC scheduler collect as soon as something is
    unreferenced, so a GC test need not wait for containerd's default schedule; ``cri``
    enables the CRI plugin with those options."""
    lines = [
        "version = 2",
        f'root = "{base}/root"',
        f'state = "{base}/state"',
        *([] if cri else [f'disabled_plugins = ["{CRI_PLUGIN}"]']),
        "[grpc]", f'  address = "{base}/containerd.sock"',
        "[ttrpc]", f'  address = "{base}/containerd.sock.ttrpc"',
        "[debug]", f'  address = "{base}/debug.sock"', f'  level = "{level}"',
        "[metrics]", '  address = ""',
    ]
    if eager_gc:
        # deletion_threshold = 1: every deletion schedules a collection at once. With 0, a
        # deletion waits for the next periodic run, avg_gc_time / pause_threshold away, which
        # reached a minute on a loaded machine (pause 0.5 is the scheduler's largest).
        lines += ['[plugins."io.containerd.gc.v1.scheduler"]', "  pause_threshold = 0.5",
                  "  deletion_threshold = 1", "  mutation_threshold = 1",
                  '  schedule_delay = "0s"', '  startup_delay = "10ms"']
    if cri is not None:
        lines += _cri_lines(cri)
    if proxy_socket:
        lines += [f"[proxy_plugins.{PROXY_NAME}]", '  type = "snapshot"',
                  f'  address = "{proxy_socket}"']
        if cri is not None and cri.exports_root is not None:
            lines += [f"[proxy_plugins.{PROXY_NAME}.exports]", f'  root = "{cri.exports_root}"']
    return "\n".join(lines) + "\n"


def plain_http_hosts_toml(host: str) -> str:
    """containerd's ``certs.d/<host>/hosts.toml`` for a registry served over plain HTTP."""
    return (f'server = "http://{host}"\n\n'
            f'[host."http://{host}"]\n  capabilities = ["pull", "resolve"]\n')


def write_containerd_config(base: Path, proxy_socket: str | None = None, *,
                            level: str = "info", eager_gc: bool = False,
                            cri: CriOptions | None = None) -> Path:
    """Write :func:`containerd_config` to ``base/config.toml`` and return its path."""
    path = base / "config.toml"
    path.write_text(containerd_config(base, proxy_socket, level=level, eager_gc=eager_gc,
                                      cri=cri))
    return path


__all__ = ["CRI_PLUGIN", "PROXY_NAME", "CriOptions", "containerd_config",
           "plain_http_hosts_toml", "write_containerd_config"]
