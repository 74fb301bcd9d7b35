"""The daemon's FUSE server is ready before the first lazy Prepare, and indexes a layer's TOC
beside the daemon (``snapfs.lazy.prepare``): one add per layer, and nothing left on it when
the Prepare fails. Real daemon, server, registry and FUSE; counts, not times.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import trio

from content.estargz import build_estargz
from content.image import Layer
from content.mediatypes import ANN_STARGZ_TOC_DIGEST, OCI_LAYER_GZIP
from content.tarlayer import Entry, build_tar
from snapfs.lazy import frames
from snapfs.lazy.fuse_server import CONTROL
from snapfs.sys.procs import running
from tests.fixtures.daemon import SnapfsDaemon
from tests.fixtures.images import ImageFactory
from tests.fixtures.registry import RegistryServer
from tests.snapfs.test_lazy_pull import need_lazy, pull_through

WAIT = 30.0  # bound on waiting for a process a loaded machine starts


def layer(text: bytes) -> tuple[Layer, str]:
    entries = [Entry("etc", "dir"), Entry("etc/motd", data=text),
               Entry("usr/lib/data.bin", data=text * 5000)]
    built = build_estargz(io.BytesIO(build_tar(entries)), chunk_size=4096)
    assert built.blob is not None
    return (Layer(built.blob, OCI_LAYER_GZIP, built.diff_id, dict(built.annotations)),
            str(built.toc_digest))


async def hello(daemon: SnapfsDaemon) -> frames.Header:
    stream = await trio.open_unix_socket(str(daemon.state / CONTROL))
    async with stream:
        await frames.send(stream, {"op": "hello", "pid": 0})
        reply = await frames.receive(stream)
    assert reply is not None
    return reply[0]


async def standby_pid(daemon: SnapfsDaemon) -> int:
    with trio.fail_after(WAIT):
        while daemon.fuse_server_pid is None or not (daemon.state / CONTROL).exists():
            await trio.sleep(0.05)
    pid = daemon.fuse_server_pid
    assert pid is not None
    return pid


def added_lines(daemon: SnapfsDaemon, digest: str) -> int:
    """How often a FUSE server (its output is the daemon's log) built a tree for the layer."""
    text = daemon.log.read_text(errors="replace")
    return sum(1 for line in text.splitlines()
               if f"layer {digest.removeprefix('sha256:')} added" in line)


async def test_the_server_is_started_with_the_daemon_and_adds_a_layer_once(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, snapfs_daemon: SnapfsDaemon) -> None:
    need_lazy()
    server = await standby_pid(snapfs_daemon)  # no Prepare has been made yet
    assert (await hello(snapfs_daemon))["layers"] == {}
    genuine, _ = layer(b"genuine\n")
    pushed = await image_factory.push(registry, repo_name, [genuine])
    async with snapfs_daemon.client() as client:
        result = await pull_through(client, tmp_path, pushed.ref)
    assert result.lazy_layers == 1
    assert snapfs_daemon.fuse_server_pid == server  # the standby serves it
    assert list((await hello(snapfs_daemon))["layers"]) == [genuine.digest.hex]
    # Indexed ahead while the daemon parsed; the Prepare's own add found it there.
    assert added_lines(snapfs_daemon, str(genuine.digest)) == 1


async def test_a_refused_toc_leaves_nothing_on_the_server(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, snapfs_daemon: SnapfsDaemon) -> None:
    need_lazy()
    await standby_pid(snapfs_daemon)
    _, genuine_toc = layer(b"genuine\n")
    forged, forged_toc = layer(b"forged!\n")
    # Its manifest vouches for another TOC: the server's check refuses it as the daemon's does.
    forged = Layer(forged.blob, forged.media_type, forged.diff_id,
                   {**forged.annotations, ANN_STARGZ_TOC_DIGEST: genuine_toc})
    pushed = await image_factory.push(registry, repo_name, [forged])
    async with snapfs_daemon.client() as client:
        with pytest.raises(BaseException) as caught:
            await pull_through(client, tmp_path, pushed.ref)
    assert genuine_toc in repr(caught.value) and forged_toc in repr(caught.value)
    assert (await hello(snapfs_daemon))["layers"] == {}
    assert added_lines(snapfs_daemon, str(forged.digest)) == 0


async def test_a_server_with_no_layer_goes_with_its_killed_daemon(
        snapfs_daemon: SnapfsDaemon) -> None:
    server = await standby_pid(snapfs_daemon)
    await snapfs_daemon.stop(kill=True)  # no ordered shutdown: it never says exit_if_idle
    # No client watches it and it serves nothing: it exits by itself, its empty mount too.
    with trio.fail_after(WAIT):
        while running(server):
            await trio.sleep(0.1)
    assert not (snapfs_daemon.root / "fuse").is_mount()
