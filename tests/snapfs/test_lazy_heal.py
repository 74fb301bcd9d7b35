"""Errors that heal on the lazy read path (#12 item 4): real registry behind a fault proxy,
real FUSE, the in-process snapshotter.

- a Range read the registry never answers becomes EIO after ``[fetch] read_timeout``, and the
  next read of that file succeeds once the registry answers again;
- a connection reset in the middle of a Range response is retried: the read succeeds;
- an ``Internal`` error (the cache race: a chunk vanishing from the cache on every attempt)
  fails that one read; later reads of the layer succeed;
- one malformed TOC entry makes only that file unreadable, never an intact file beside it;
- a layer whose TOC parses but whose tree does not build leaves nothing behind: the next
  Prepare indexes it again (and fails the same way), never answers AlreadyExists;
- a background completion that fails on the registry (5xx past the client's retries) is tried
  again, and the layer becomes local without another read;
- a read that fails for good names registry, repository and blob, in the layer's status
  (``last_error``) and in one log line.

Only the Internal error is injected from inside (a race cannot be produced on demand); every
other fault is the proxy's or the image's own.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import random
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from content.chunkedtar import ChunkedSink, write_chunked_entries
from content.errors import InvalidArgument
from content.estargz import finish_estargz
from content.image import Layer
from content.mediatypes import OCI_LAYER_GZIP
from content.tarlayer import Entry, build_tar
from snapfs.lazy.layers import layer_id
from snapfs.lazy.schedule import FetchOptions
from tests.fixtures.images import ImageFactory
from tests.fixtures.registry import FaultProxy, RegistryServer
from tests.snapfs.test_cli_run import SnapfsCli, short_dir, snapfs_cli
from tests.snapfs.test_gc import configure
from tests.snapfs.test_lazy_pull import (
    CHUNK,
    big_so,
    lazy_layer,
    lazy_puller,
    need_lazy,
    push_image,
    read_file,
)

PASSWD = b"root:x:0:0:root:/root:/bin/sh\n"


def read_errno(path: Path) -> int:
    """The errno reading ``path`` fails with (blocking; 0 if it does not fail)."""
    try:
        path.read_bytes()
    except OSError as exc:
        return exc.errno or -1
    return 0


def no_window(**kw: Any) -> FetchOptions:
    # No locality window: each read fetches only its own chunks, so a stall or a fault
    # lands on the read the test makes.
    return FetchOptions(background=False, window=0, **kw)


async def test_a_stalled_range_read_is_eio_after_read_timeout_then_heals(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, fault_proxy: Callable[..., FaultProxy]) -> None:
    need_lazy()
    proxy = fault_proxy(registry.url)
    pushed, layers = await push_image(image_factory, proxy, repo_name, repo_name)
    root = tmp_path / "root"
    # The registry client's own read timeout is 30 s: the read's deadline comes first.
    async with lazy_puller(root, no_window(read_timeout=1.0)) as (puller, lazy, _):
        await puller.pull(pushed.ref)
        bottom = root / "fuse" / layer_id(layers[0].digest)
        # Silent for every Range request from now on (the kernel retries a failed
        # readahead once, so one read(2) is two FUSE reads).
        proxy.stall_ranges = 100
        with trio.fail_after(20):  # a hang fails the test instead of wedging it
            code = await trio.to_thread.run_sync(read_errno, bottom / "usr/lib/big.so")
        assert code == errno.EIO and proxy.ranges_stalled >= 1
        (status,) = [s for s in lazy.layer_status() if s.digest == str(layers[0].digest)]
        assert status.state == "lazy" and "did not answer within 1 s" in status.last_error
        # The registry answers again: the same file reads whole, and so do the others.
        proxy.stall_ranges = 0
        proxy.unstall.set()
        assert await read_file(bottom / "usr/lib/big.so") == big_so(repo_name)
        assert await read_file(bottom / "etc/passwd") == PASSWD


async def test_a_reset_mid_range_is_retried_and_the_read_succeeds(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, fault_proxy: Callable[..., FaultProxy]) -> None:
    need_lazy()
    proxy = fault_proxy(registry.url)
    pushed, layers = await push_image(image_factory, proxy, repo_name, repo_name)
    root = tmp_path / "root"
    async with lazy_puller(root, no_window()) as (puller, lazy, _):
        await puller.pull(pushed.ref)
        bottom = root / "fuse" / layer_id(layers[0].digest)
        proxy.reset_after, proxy.reset_times = 1000, 1
        assert await read_file(bottom / "usr/lib/big.so") == big_so(repo_name)
        assert proxy.reset_times == 0  # the reset happened, and the read still succeeded
        assert all(s.last_error == "" for s in lazy.layer_status())


async def test_a_failed_background_completion_is_tried_again(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, fault_proxy: Callable[..., FaultProxy],
        caplog: pytest.LogCaptureFixture) -> None:
    need_lazy()
    proxy = fault_proxy(registry.url)
    pushed, layers = await push_image(image_factory, proxy, repo_name, repo_name)
    root = tmp_path / "root"
    # Background pieces wait for 0.5 s without other requests after a mount: the registry
    # fails before the first of them goes out.
    options = FetchOptions(background=True, window=0, background_hold=3600,
                           background_pause=0.5)
    with caplog.at_level(logging.WARNING, logger="snapfs.lazy.lifecycle"):
        async with lazy_puller(root, options) as (puller, lazy, _):
            await puller.pull(pushed.ref)
            proxy.fail_with = [503] * 100_000  # every request, until cleared
            with trio.fail_after(60):  # the completion failed (and said so)
                while not any(r.name == "snapfs.lazy.lifecycle" for r in caplog.records):
                    await trio.sleep(0.05)
            failed = 100_000 - len(proxy.fail_with)
            proxy.fail_with.clear()
            # A layer whose every byte the pull's own requests fetched (its startup set) may
            # be complete already: its spool held the whole blob (snapfs.lazy.spool).
            assert failed > 0 and any(s.state != "local" for s in lazy.layer_status())
            with trio.fail_after(120):  # the first retry comes 2 s later; no read asks for it
                while any(s.state != "local" for s in lazy.layer_status()):
                    await trio.sleep(0.1)
            bottom = root / "layers" / layer_id(layers[0].digest)
            assert (bottom / "usr/lib/big.so").read_bytes() == big_so(repo_name)


async def test_an_internal_error_fails_one_read_and_later_reads_succeed(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    need_lazy()
    pushed, layers = await push_image(image_factory, registry, repo_name, repo_name)
    root = tmp_path / "root"
    async with lazy_puller(root, no_window()) as (puller, lazy, _):
        await puller.pull(pushed.ref)
        bottom, top = (root / "fuse" / layer_id(layer.digest) for layer in layers)
        shared = await read_file(bottom / "usr/lib/shared.bin")  # its chunks are cached now
        fetcher = lazy.fetcher(layers[1].digest)
        # The race: the chunks are in the cache when asked, gone when read, on each of the
        # fetcher's attempts (injected: a race does not happen on demand), for one read(2)
        # (the FUSE read and the kernel's retry of a failed readahead).
        misses = [0]

        def vanishing(digest: Any, offset: int, size: int) -> bytes | None:
            misses[0] += 1
            return None

        with monkeypatch.context() as patch:
            patch.setattr(fetcher.cache, "read", vanishing)
            code = await trio.to_thread.run_sync(read_errno, top / "opt/shared.bin")
        assert code == errno.EIO and misses[0] >= 4
        assert "chunks vanished from the cache" in lazy.views()[
            layer_id(layers[1].digest)].last_error
        # One failed read; the layer stays in service.
        assert await read_file(top / "opt/shared.bin") == shared
        assert await read_file(top / "var/cache/new") == b"new\n"
        assert {s.state for s in lazy.layer_status()} == {"lazy"}
        assert all(lazy.fs.stats(i).healthy for i in lazy.fs.layer_ids())


# -- layers with a malformed TOC ------------------------------------------------------------


def estargz_edited(entries: list[Entry], edit: Callable[[list[dict[str, Any]]], None]) -> Layer:
    """An eStargz layer whose TOC ``edit`` changed before it was written (and digested):
    a TOC its manifest vouches for, malformed by its author."""
    sink = ChunkedSink(None, _gzip)
    toc = write_chunked_entries(io.BytesIO(build_tar(entries)), sink, chunk_size=CHUNK,
                                prioritized=(), record_end=False)
    edit(toc)
    built = finish_estargz(sink, toc)
    assert built.blob is not None
    return Layer(built.blob, OCI_LAYER_GZIP, built.diff_id, dict(built.annotations))


def _gzip(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


def malformed_entries(seed: str) -> list[Entry]:
    rnd = random.Random(seed)
    return [Entry("etc", "dir"), Entry("etc/passwd", data=PASSWD),
            Entry("data", "dir"), Entry("data/bad.bin", data=rnd.randbytes(3 * CHUNK)),
            Entry("data/good.bin", data=rnd.randbytes(2 * CHUNK))]


def drop_chunk_digest(name: str) -> Callable[[list[dict[str, Any]]], None]:
    """Leave the second chunk of ``name`` with no digest to verify it against."""
    def edit(toc: list[dict[str, Any]]) -> None:
        chunks = [e for e in toc if e["name"] == name]
        assert len(chunks) >= 2
        chunks[1].pop("chunkDigest", None)
        chunks[1].pop("digest", None)
    return edit


def nest_deeply(depth: int) -> Callable[[list[dict[str, Any]]], None]:
    """Directories nested deeper than a tree can be built (the TOC itself parses)."""
    def edit(toc: list[dict[str, Any]]) -> None:
        toc.extend({"name": "/".join(["d"] * i), "type": "dir", "mode": 0o755}
                   for i in range(1, depth + 1))
    return edit


async def test_a_malformed_toc_entry_affects_only_that_entry(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory) -> None:
    need_lazy()
    entries = malformed_entries(repo_name)
    layer = estargz_edited(entries, drop_chunk_digest("data/bad.bin"))
    pushed = await image_factory.push(registry, repo_name, [layer])
    root = tmp_path / "root"
    async with lazy_puller(root, no_window()) as (puller, lazy, _):
        result = await puller.pull(pushed.ref)
        assert result.lazy_layers == 1
        d = root / "fuse" / layer_id(layer.digest)
        good = next(e.data for e in entries if e.path == "data/good.bin")
        assert await read_file(d / "data/good.bin") == good
        assert await read_file(d / "etc/passwd") == PASSWD
        # The malformed file is listed with its size, and reading it is EIO, every time.
        st = await trio.to_thread.run_sync((d / "data/bad.bin").stat)
        assert st.st_size == 3 * CHUNK
        for _ in range(2):
            assert await trio.to_thread.run_sync(read_errno, d / "data/bad.bin") == errno.EIO
        assert await read_file(d / "data/good.bin") == good
        (status,) = lazy.layer_status()
        assert status.state == "lazy" and "data/bad.bin" in status.last_error


async def test_a_tree_that_does_not_build_leaves_no_record(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory) -> None:
    need_lazy()
    layer = estargz_edited(malformed_entries(repo_name), nest_deeply(1500))
    pushed = await image_factory.push(registry, repo_name, [layer])
    root = tmp_path / "root"
    async with lazy_puller(root, no_window()) as (puller, lazy, sn):
        for _ in range(2):  # the second Prepare indexes it again: nothing was left of it
            with pytest.raises(BaseException) as caught:
                await puller.pull(pushed.ref)
            error = _only(caught.value)
            assert isinstance(error, InvalidArgument), repr(error)
            assert "nested too deeply" in str(error) and layer.digest.short() in str(error)
            assert lazy.layer_status() == [] and lazy.db.all() == []
            assert lazy.fs.layer_ids() == []
            assert [i.name async for i in _walk(sn)] == []


async def _walk(sn: Any) -> Any:
    for info in await sn.list():
        yield info


def _only(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


# -- a read that fails for good -------------------------------------------------------------


async def test_a_read_failing_for_good_names_registry_repository_and_blob(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, fault_proxy: Callable[..., FaultProxy],
        caplog: pytest.LogCaptureFixture) -> None:
    need_lazy()
    proxy = fault_proxy(registry.url)
    pushed, layers = await push_image(image_factory, proxy, repo_name, repo_name)
    root = tmp_path / "root"
    async with lazy_puller(root, no_window()) as (puller, lazy, _):
        await puller.pull(pushed.ref)
        bottom = root / "fuse" / layer_id(layers[0].digest)
        proxy.fail_with = [503] * 40  # more than the registry client's retries
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            code = await trio.to_thread.run_sync(read_errno, bottom / "etc/passwd")
        assert code == errno.EIO
        names = (proxy.host, repo_name, str(layers[0].digest))
        (status,) = [s for s in lazy.layer_status() if s.digest == str(layers[0].digest)]
        assert all(n in status.last_error for n in names), status.last_error
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR
                 and all(n in r.getMessage() for n in names)]
        # One line per failed FUSE read: the read and the kernel's retry of it.
        assert 1 <= len(lines) <= 2 and all("/etc/passwd" in ln for ln in lines), lines
        proxy.fail_with = []
        assert await read_file(bottom / "etc/passwd") == PASSWD


async def test_snapfs_run_names_the_failed_lazy_read(
        snapfs_cli: SnapfsCli, tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, busybox_tree: Path,
        fault_proxy: Callable[..., FaultProxy]) -> None:
    """The container sees only EIO; ``snapfs run`` says which registry, repository and blob
    failed (the line a user is pointed to), and through a daemon so does ``snapfs status``
    (the read ran in its FUSE server, which reports the failure to the daemon)."""
    proxy = fault_proxy(registry.url)
    app = lazy_layer([Entry("app", "dir"), Entry("app/data.txt", data=b"lazy data\n")],
                     "estargz")
    pushed = await image_factory.push(proxy, repo_name, [busybox_tree, app])
    flags = await configure(snapfs_cli, tmp_path, "[fetch]\nbackground = false\n")
    await snapfs_cli.ok("pull", "-q", *flags, str(pushed.ref))
    proxy.fail_with = [503] * 200  # the registry fails every request from now on
    res = await snapfs_cli("run", "--rm", "-q", *flags, str(pushed.ref),
                           "/bin/cat", "/app/data.txt")
    assert res.status != 0
    names = (proxy.host, repo_name, str(app.digest))
    lines = [ln for ln in res.stderr.splitlines() if "a lazy read failed" in ln]
    assert lines, res.stderr
    assert all(n in lines[0] for n in names), lines
    if snapfs_cli.daemon is not None:
        reports = json.loads(await snapfs_cli.ok("status", "--json", *flags))
        (failed,) = [r for r in reports if r["digest"] == str(app.digest)]
        assert all(n in failed["last_error"] for n in names), failed
    proxy.fail_with = []
    out = await snapfs_cli.ok("run", "--rm", "-q", *flags, str(pushed.ref),
                              "/bin/cat", "/app/data.txt")
    assert out == "lazy data\n"


__all__ = ["short_dir", "snapfs_cli"]  # fixtures, imported to be found by pytest
