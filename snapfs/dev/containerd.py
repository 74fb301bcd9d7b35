"""The config of a private containerd 1.6 for tests and benchmarks: the one writer of it.

Its own root, state and sockets under ``base`` (short: socket paths must fit in 108 bytes),
snapfs attached as the proxy snapshotter ``snapfs`` when a socket is given. The CRI plugin is
disabled: tests and benchmarks talk to it with ``ctr`` in a namespace of their own. Must not
start or stop anything (the test fixture and the bench do, each stopping only its own PID).
"""

from __future__ import annotations

from pathlib import Path

PROXY_NAME = "snapfs"


def containerd_config(base: Path, proxy_socket: str | None = None, *, level: str = "info",
                      eager_gc: bool = False) -> str:
    """The TOML text. ``eager_gc`` makes the GC scheduler collect as soon as something is
    unreferenced, so a GC test need not wait for containerd's default schedule."""
    lines = [
        "version = 2",
        f'root = "{base}/root"',
        f'state = "{base}/state"',
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
        "[grpc]", f'  address = "{base}/containerd.sock"',
        "[ttrpc]", f'  address = "{base}/containerd.sock.ttrpc"',
        "[debug]", f'  address = "{base}/debug.sock"', f'  level = "{level}"',
        "[metrics]", '  address = ""',
    ]
    if eager_gc:
        lines += ['[plugins."io.containerd.gc.v1.scheduler"]', "  pause_threshold = 0.02",
                  "  deletion_threshold = 0", "  mutation_threshold = 1",
                  '  schedule_delay = "0s"', '  startup_delay = "10ms"']
    if proxy_socket:
        lines += [f"[proxy_plugins.{PROXY_NAME}]", '  type = "snapshot"',
                  f'  address = "{proxy_socket}"']
    return "\n".join(lines) + "\n"


def write_containerd_config(base: Path, proxy_socket: str | None = None, *,
                            level: str = "info", eager_gc: bool = False) -> Path:
    """Write :func:`containerd_config` to ``base/config.toml`` and return its path."""
    path = base / "config.toml"
    path.write_text(containerd_config(base, proxy_socket, level=level, eager_gc=eager_gc))
    return path


__all__ = ["PROXY_NAME", "containerd_config", "write_containerd_config"]
