"""Running lazy containers survive restarts of the daemon: ``snapfs fuse-server`` holds the
mount (issue #12 item 3).

Each "container" is a real overlay mount of a lazy snapshot (its lowerdir on the FUSE
mount) with a reader process in it that hashes the files it is told to read. The daemon is
stopped (SIGTERM and SIGKILL in turn), readers are given files whose chunks are not local
yet (background fetching off), and only then is a daemon started again: every read waits
for it and returns the right bytes. Also: a read that no daemon answers within ``[fetch]
read_timeout`` fails with EIO and the next one succeeds; a SIGKILLed FUSE server leaves new
Prepares working on a fresh one, while snapshots on the dead mount answer Unavailable.
"""

from __future__ import annotations

import errno
import hashlib
import io
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

from content.estargz import build_estargz
from content.image import Layer
from content.mediatypes import OCI_LAYER_GZIP
from content.tarlayer import Entry, build_tar
from snapfs.client.snapshots import SnapshotsClient
from snapfs.errors import ContentError, Unavailable
from snapfs.snapshot.mounting import mount_all
from snapfs.sys.mountops import unmount
from tests.fixtures.daemon import SnapfsDaemon
from tests.fixtures.images import ImageFactory
from tests.fixtures.registry import RegistryServer
from tests.snapfs.test_lazy_pull import need_lazy, pull_through

READERS = 8
ROUNDS = 10  # daemon restarts: SIGTERM and SIGKILL in turn
PER_ROUND = 2  # files each reader is given while the daemon is down
T = 1_600_000_000
# Every first read of a file needs the network: no background fetch, and no locality window
# (which would bring the next files along with a miss).
CONFIG = "[fetch]\nbackground = false\nwindow = 0\n"

READER = r"""
import hashlib, os, sys
root = sys.argv[1]
for line in sys.stdin:
    path = line.strip()
    try:
        with open(os.path.join(root, path), "rb") as f:
            h = hashlib.sha256()
            while chunk := f.read(65536):
                h.update(chunk)
        print("ok", path, h.hexdigest(), flush=True)
    except OSError as e:
        print("err", path, e.errno, flush=True)
"""


def files(seed: str, n: int) -> dict[str, bytes]:
    rnd = random.Random(seed)
    return {f"data/f{i:03d}": rnd.randbytes(rnd.randrange(20_000, 90_000)) for i in range(n)}


def image_layer(contents: dict[str, bytes]) -> Layer:
    entries = [Entry("data", "dir", mtime=T)]
    entries += [Entry(p, data=d, mtime=T) for p, d in contents.items()]
    built = build_estargz(io.BytesIO(build_tar(entries)), chunk_size=64 * 1024)
    assert built.blob is not None
    return Layer(built.blob, OCI_LAYER_GZIP, built.diff_id, dict(built.annotations))


class Reader:
    """One process reading inside one overlay mount (a container's rootfs)."""

    def __init__(self, proc: trio.Process, out: trio.abc.ReceiveStream) -> None:
        self.proc = proc
        self._out = out
        self._buf = b""

    async def ask(self, paths: list[str]) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all("".join(p + "\n" for p in paths).encode())

    async def answer(self) -> list[str]:
        while b"\n" not in self._buf:
            chunk = await self._out.receive_some(4096)
            assert chunk, "reader exited"
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode().split()


@asynccontextmanager
async def containers(client: SnapshotsClient, parent: str, base: Path,
                     n: int, key: str = "c") -> AsyncIterator[list[Reader]]:
    async with AsyncExitStack() as stack:
        readers = []
        for i in range(n):
            target = base / f"c{i}"
            target.mkdir(parents=True)
            await mount_all(await client.prepare(f"{key}{i}", parent), target)
            stack.push_async_callback(_unmount, target)
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-c", READER, str(target)], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE)
            stack.push_async_callback(_end, proc)
            assert proc.stdout is not None
            readers.append(Reader(proc, proc.stdout))
        yield readers


async def _unmount(target: Path) -> None:
    with trio.CancelScope(shield=True):
        await unmount(target)


async def _end(proc: trio.Process) -> None:
    with trio.CancelScope(shield=True):
        if proc.stdin is not None:
            await proc.stdin.aclose()
        with trio.move_on_after(10):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def log_count(daemon: SnapfsDaemon, text: str) -> int:
    return daemon.log.read_text(errors="replace").count(text)


async def until_logged(daemon: SnapfsDaemon, text: str, more_than: int) -> None:
    with trio.fail_after(20):
        while log_count(daemon, text) <= more_than:
            await trio.sleep(0.02)


WAITING = "waiting up to"  # the FUSE server's line when a read finds no daemon


async def test_lazy_containers_read_right_bytes_across_daemon_restarts(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, snapfs_daemon: SnapfsDaemon) -> None:
    need_lazy()
    snapfs_daemon.config_text = CONFIG
    await snapfs_daemon.restart(kill=False)
    contents = files(repo_name, READERS * (ROUNDS * PER_ROUND + ROUNDS + 1))
    expected = {p: hashlib.sha256(d).hexdigest() for p, d in contents.items()}
    pushed = await image_factory.push(registry, repo_name, [image_layer(contents)])
    async with snapfs_daemon.client() as client:
        result = await pull_through(client, tmp_path, pushed.ref)
        assert result.lazy_layers == 1
        parent = str(result.record.chain_ids[-1])
        server = snapfs_daemon.fuse_server_pid
        assert server is not None
        pending = iter(sorted(contents))
        answers: list[list[str]] = []
        async with containers(client, parent, tmp_path / "c", READERS) as readers:
            async def read_round(k: int) -> None:
                got = [await r.answer() for r in readers for _ in range(k)]
                answers.extend(got)
                for a in got:
                    assert a[0] == "ok", a
                    assert a[2] == expected[a[1]], a  # the right bytes

            for r in readers:  # a first read while the daemon serves
                await r.ask([next(pending)])
            await read_round(1)
            for i in range(ROUNDS):
                await snapfs_daemon.stop(kill=i % 2 == 1)
                before = log_count(snapfs_daemon, WAITING)
                for r in readers:
                    await r.ask([next(pending) for _ in range(PER_ROUND)])
                # Reads that need the network now wait: no daemon answers.
                await until_logged(snapfs_daemon, WAITING, before)
                await snapfs_daemon.start()
                await read_round(PER_ROUND)
                for r in readers:  # and a read with the daemon up again
                    await r.ask([next(pending)])
                await read_round(1)
                # The same FUSE server throughout: the daemon reconnected to it.
                assert snapfs_daemon.fuse_server_pid == server
        assert len(answers) == READERS * (1 + ROUNDS * (PER_ROUND + 1))
        assert log_count(snapfs_daemon, "the FUSE server still serves it") >= ROUNDS


async def test_a_read_no_daemon_answers_in_time_fails_and_the_next_succeeds(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, snapfs_daemon: SnapfsDaemon) -> None:
    need_lazy()
    snapfs_daemon.config_text = CONFIG + "read_timeout = 1\n"
    await snapfs_daemon.restart(kill=False)
    contents = files(repo_name, 4)
    pushed = await image_factory.push(registry, repo_name, [image_layer(contents)])
    async with snapfs_daemon.client() as client:
        result = await pull_through(client, tmp_path, pushed.ref)
        parent = str(result.record.chain_ids[-1])
        async with containers(client, parent, tmp_path / "c", 1) as (reader,):
            await snapfs_daemon.stop(kill=True)
            await reader.ask(["data/f000"])
            assert await reader.answer() == ["err", "data/f000", str(errno.EIO)]
            await snapfs_daemon.start()
            await reader.ask(["data/f000", "data/f001"])
            for path in ("data/f000", "data/f001"):
                ok, got, digest = await reader.answer()
                assert (ok, got) == ("ok", path)
                assert digest == hashlib.sha256(contents[path]).hexdigest()


async def test_a_killed_fuse_server_leaves_new_prepares_working_and_old_ones_unavailable(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, snapfs_daemon: SnapfsDaemon) -> None:
    need_lazy()
    snapfs_daemon.config_text = CONFIG
    await snapfs_daemon.restart(kill=False)
    old = files(repo_name + "old", 3)
    new = files(repo_name + "new", 3)
    old_image = await image_factory.push(registry, repo_name, [image_layer(old)], tag="old")
    new_image = await image_factory.push(registry, repo_name, [image_layer(new)], tag="new")
    async with snapfs_daemon.client() as client:
        first = await pull_through(client, tmp_path / "a", old_image.ref)
        old_parent = str(first.record.chain_ids[-1])
        async with containers(client, old_parent, tmp_path / "c", 1) as (reader,):
            await reader.ask(["data/f000"])
            assert (await reader.answer())[0] == "ok"
            killed = await snapfs_daemon.kill_fuse_server()
            assert killed is not None
            await until_logged(snapfs_daemon, "died: layers it served lazily are lost", 0)
            # The container's mount is dead with its server (nothing can revive it) ...
            await reader.ask(["data/f001"])
            assert await reader.answer() == ["err", "data/f001", str(errno.ENOTCONN)]
        # ... and its snapshots say so instead of handing out a dead directory.
        calls = (partial(client.mounts, "c0"), partial(client.prepare, "c1", old_parent),
                 partial(client.view, "v1", old_parent))
        for call in calls:
            with pytest.raises(ContentError) as err:
                await call()
            assert isinstance(err.value, Unavailable), err.value
            assert "FUSE server died" in str(err.value)
        # A new image is served at once, by a fresh FUSE server.
        second = await pull_through(client, tmp_path / "b", new_image.ref)
        assert second.lazy_layers == 1
        assert snapfs_daemon.fuse_server_pid not in (None, killed)
        async with containers(client, str(second.record.chain_ids[-1]), tmp_path / "d",
                              1, key="new") as (reader,):
            await reader.ask(["data/f002"])
            ok, _, digest = await reader.answer()
            assert (ok, digest) == ("ok", hashlib.sha256(new["data/f002"]).hexdigest())
