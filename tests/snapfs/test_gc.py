"""Acceptance for issue #14 (disk that is given back) with the real CLI, registry, FUSE,
overlayfs and runc, embedded and through a daemon: ``rmi`` + ``prune`` leave the root's empty
skeleton; a GC while a container reads a lazy layer removes nothing it needs; a bounded chunk
cache serves every byte correctly and stays within its limit; ``images``/``df`` sizes match
``du``; counters are the same with and without the daemon."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from pathlib import Path

import trio

from content.convert import convert_image
from content.metadata import DATABASES, MetadataDB
from content.reference import Reference, parse_reference
from content.registry import open_registry
from content.tarlayer import Entry
from snapfs.client.reports import LayerReport
from snapfs.sys.mountinfo import mounts_under
from tests.fixtures.images import ImageFactory
from tests.fixtures.registry import RegistryServer
from tests.snapfs import test_cli_run
from tests.snapfs.test_cli_run import SnapfsCli

snapfs_cli = test_cli_run.snapfs_cli
short_dir = test_cli_run.short_dir

CHUNK = 64 * 1024  # the converted layers' chunk size: one chunk span
FILES = 24
DATA = {f"data/f{i:02d}": hashlib.sha256(str(i).encode()).digest() * (96 * 1024 // 32)
        for i in range(FILES)}  # 24 files of 96 KiB: 2.25 MiB, each file two chunks
DATA_LAYER = [Entry("data", "dir"), *(Entry(name, data=body) for name, body in DATA.items())]
SUMS = {f"/{name}": hashlib.sha256(body).hexdigest() for name, body in DATA.items()}
SHA_ALL = "sha256sum /data/*"


async def push_three(factory: ImageFactory, registry: RegistryServer, repo: str,
                     busybox_tree: Path) -> tuple[Reference, Reference, Reference]:
    """A plain (native) image and its eStargz and zstd:chunked conversions (lazy)."""
    src = (await factory.push(registry, repo, [busybox_tree, DATA_LAYER],
                              config={"Cmd": ["/bin/sh"]})).ref
    out = [src]
    async with open_registry() as reg:
        for tag, fmt in (("esgz", "estargz"), ("zstd", "zstd:chunked")):
            dst = parse_reference(f"{registry.host}/{repo}:{tag}")
            await convert_image(reg, src, dst, format=fmt, chunk_size=CHUNK)
            out.append(dst)
    return out[0], out[1], out[2]


def sums(text: str) -> dict[str, str]:
    return {line.split()[1]: line.split()[0] for line in text.splitlines() if line.strip()}


async def configure(cli: SnapfsCli, tmp: Path, text: str) -> list[str]:
    """``text`` as the config of the daemon (restarted) and of each command (the flags
    returned), as one /etc/snapfs/config.toml is for both on a node."""
    if cli.daemon is not None:
        cli.daemon.config_text = text
        await cli.daemon.restart(kill=False)
    path = tmp / "snapfs.toml"
    path.write_text(text)
    return ["--config", str(path)]


def listdir(path: Path) -> list[str]:
    return os.listdir(path) if path.exists() else []


def files_under(root: Path) -> dict[str, int]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            out[str(path.relative_to(root))] = path.lstat().st_size
    return out


def lmdb_rows(root: Path) -> dict[str, list[str]]:
    with MetadataDB.open(root) as md:
        return md.read(lambda tx: {db.decode(): [k.decode() for k, _ in tx.scan(db)]
                                   for db in DATABASES})


def du_files(path: Path) -> int:
    """``du -b`` of the regular files below ``path`` (directories' own sizes left out)."""
    found = subprocess.run(["find", str(path), "-type", "f", "-print0"], check=True,
                           capture_output=True).stdout
    if not found:
        return 0
    out = subprocess.run(["du", "-cb", "--files0-from=-"], input=found, check=True,
                         capture_output=True).stdout.decode()
    return int(out.splitlines()[-1].split()[0])


def cache_bytes(path: Path) -> int:
    """The chunk files' bytes now (chunks come and go while it looks)."""
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(path):
            with contextlib.suppress(FileNotFoundError):
                total += entry.stat(follow_symlinks=False).st_size
    return total


def close(a: int, b: int) -> bool:
    return abs(a - b) <= 0.01 * max(a, b)


async def test_rmi_and_prune_leave_only_the_empty_skeleton(
        snapfs_cli: SnapfsCli, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, busybox_tree: Path) -> None:
    refs = await push_three(image_factory, registry, repo_name, busybox_tree)
    for ref in refs:
        await snapfs_cli.ok("pull", "-q", str(ref))
    lazy = {i["name"]: i["lazy"] for i in json.loads(await snapfs_cli.ok("images", "--json"))}
    assert lazy == {str(refs[0]): False, str(refs[1]): True, str(refs[2]): True}
    for ref in refs:
        out = await snapfs_cli.ok("run", "--rm", "-q", str(ref), "sha256sum", "/data/f03")
        assert sums(out) == {"/data/f03": SUMS["/data/f03"]}
    await snapfs_cli.ok("run", "-q", "--name", "kept", str(refs[1]), "touch", "/root/x")
    await snapfs_cli.ok("rm", "kept")
    held = [*listdir(snapfs_cli.root / "chunks" / "sha256"),
            *listdir(snapfs_cli.root / "layers")]
    assert held  # chunks of the lazy reads, or the layers materialised since: for GC to take

    await snapfs_cli.ok("rmi", *map(str, refs))
    await snapfs_cli.ok("prune")

    assert await snapfs_cli.snapshots() == []
    assert json.loads(await snapfs_cli.ok("images", "--json")) == []
    if snapfs_cli.daemon is not None:
        # Only the daemon's FUSE mount, with no layer in it; none once it stops.
        assert [str(p) for p in mounts_under(snapfs_cli.root)] in (
            [], [str(snapfs_cli.root / "fuse")])
        if mounts_under(snapfs_cli.root):
            assert await trio.to_thread.run_sync(os.listdir, snapfs_cli.root / "fuse") == []
        await snapfs_cli.daemon.stop()
    assert mounts_under(snapfs_cli.root) == []
    # Every file left is LMDB's (or the stopped daemon's emptied pid file); every other path
    # is an empty directory of the skeleton.
    files = files_under(snapfs_cli.root)
    rest = {f: n for f, n in files.items() if not f.startswith("metadata.lmdb/")}
    assert rest in ({}, {"snapfs.pid": 0}), files
    dirs = sorted(str(Path(d).relative_to(snapfs_cli.root))
                  for d, _, _ in os.walk(snapfs_cli.root))
    assert set(dirs) <= {".", "chunks", "chunks/sha256", "chunks/tmp", "content",
                         "content/blobs", "content/blobs/sha256", "content/ingest", "fuse",
                         "layers", "leases", "metadata.lmdb", "snapshots"}, dirs
    rows = lmdb_rows(snapfs_cli.root)
    assert rows["images"] == []
    assert set(rows["snapshots"]) <= {"v1/schema", "v1/next-id"}
    assert set(rows["content"]) <= {"content/version"}
    assert set(rows["layers"]) <= {"v1/schema", "v1/counters/cache"}


async def test_gc_while_a_container_reads_a_lazy_layer_removes_nothing_it_needs(
        snapfs_cli: SnapfsCli, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, busybox_tree: Path, tmp_path: Path) -> None:
    _, esgz, _ = await push_three(image_factory, registry, repo_name, busybox_tree)
    flags = await configure(snapfs_cli, tmp_path, "[fetch]\nbackground = false\n")
    await snapfs_cli.ok("run", "-d", "-q", "--name", "reader", *flags, str(esgz),
                        "sleep", "1000")
    first = await snapfs_cli.ok("exec", "reader", "sha256sum", "/data/f00", "/data/f01")
    assert sums(first) == {k: SUMS[k] for k in ("/data/f00", "/data/f01")}
    chunks = snapfs_cli.root / "chunks" / "sha256"
    before = set(listdir(chunks))
    assert before

    await snapfs_cli.ok("rmi", *flags, str(esgz))  # untagged while the container runs
    await snapfs_cli.ok("prune", *flags)

    assert set(listdir(chunks)) >= before  # nothing the running container's layers hold
    reports = json.loads(await snapfs_cli.ok("status", "--json", *flags))
    assert len(reports) == 2  # both lazy layers are still there, still lazy
    assert {r["state"] for r in reports} <= {"lazy", "fetching"}
    assert sums(await snapfs_cli.ok("exec", "reader", "sh", "-c", SHA_ALL)) == SUMS
    await snapfs_cli.ok("rm", "-f", "reader")
    await snapfs_cli.ok("prune", *flags)
    assert listdir(chunks) == []
    assert await snapfs_cli.snapshots() == []


async def test_a_bounded_cache_serves_every_byte_and_stays_within_its_limit(
        snapfs_cli: SnapfsCli, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, busybox_tree: Path, tmp_path: Path) -> None:
    _, esgz, _ = await push_three(image_factory, registry, repo_name, busybox_tree)
    limit = 320 * 1024  # well below the image's 2.25 MiB of data alone
    flags = await configure(snapfs_cli, tmp_path, f"[cache]\nmax_size = {limit}\n"
                            "[fetch]\nbackground = false\nrelease_interval = 0.2\n")
    chunks = snapfs_cli.root / "chunks"
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            used = await trio.to_thread.run_sync(cache_bytes, chunks / "sha256")
            peak = max(peak, used)
            await trio.sleep(0.005)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        out = await snapfs_cli.ok("run", "--rm", "-q", *flags, str(esgz), "sh", "-c", SHA_ALL)
        nursery.cancel_scope.cancel()
    assert sums(out) == SUMS  # every byte, sha256 against the native content
    assert 0 < peak <= limit + CHUNK, peak
    assert du_files(chunks / "sha256") <= limit
    with trio.fail_after(30):  # a daemon persists its counters every release_interval
        while True:
            report = json.loads(await snapfs_cli.ok("df", "--json", *flags))
            if report["cache"]["evictions"] > 0:
                break
            await trio.sleep(0.2)
    assert report["cache"]["limit"] == limit
    # At least what did not fit was evicted, and every eviction is counted.
    assert report["cache"]["evicted_bytes"] >= sum(map(len, DATA.values())) - limit


async def test_images_and_df_sizes_match_du_and_counters_survive_the_daemon(
        snapfs_cli: SnapfsCli, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, busybox_tree: Path, tmp_path: Path) -> None:
    native, esgz, _ = await push_three(image_factory, registry, repo_name, busybox_tree)
    flags = await configure(snapfs_cli, tmp_path, "[fetch]\nbackground = false\n")
    await snapfs_cli.ok("pull", "-q", *flags, str(native))
    await snapfs_cli.ok("pull", "-q", *flags, str(esgz))
    await snapfs_cli.ok("run", "--rm", "-q", *flags, str(esgz), "sha256sum", "/data/f05",
                        "/data/f06")
    images = {i["name"]: i for i in json.loads(await snapfs_cli.ok("images", "--json", *flags))}
    snapshots = snapfs_cli.root / "snapshots"
    native_du = sum(du_files(p / "fs") for p in snapshots.iterdir() if (p / "fs").is_dir())
    n, z = images[str(native)], images[str(esgz)]
    assert close(n["size"], native_du), (n, native_du)
    assert n["local_size"] == n["size"] and 0 < n["compressed_size"] < n["size"]
    assert close(z["size"], n["size"])  # the same files, lazily
    assert z["lazy"] and not n["lazy"]
    report = json.loads(await snapfs_cli.ok("df", "--json", *flags))
    assert close(report["content"]["bytes"], du_files(snapfs_cli.root / "content" / "blobs"))
    cache_du = du_files(snapfs_cli.root / "chunks" / "sha256")
    assert report["cache"]["bytes"] == cache_du > 0
    lazy_rows = [r for r in report["layers"] if r["kind"] == "lazy"]
    assert len(lazy_rows) == 2
    assert sum(r["local_bytes"] for r in lazy_rows) == cache_du  # what the reads left
    assert close(z["local_size"], cache_du)
    assert close(sum(r["total_bytes"] for r in report["layers"] if r["kind"] == "native"),
                 native_du)
    if snapfs_cli.daemon is not None:
        # Usage of a lazy snapshot: the bytes it holds here (what kubelet's image GC counts).
        async with snapfs_cli.daemon.client() as client:
            held = [(await client.usage(c)).size for c in z["chain_ids"]]
        assert close(sum(held), cache_du), (held, cache_du)
    # The lazy image's pull is not repeated as native: LAZY stays on a re-pull.
    await snapfs_cli.ok("pull", "-q", *flags, str(esgz))
    again = {i["name"]: i for i in json.loads(await snapfs_cli.ok("images", "--json", *flags))}
    assert again[str(esgz)]["lazy"] is True

    before = [LayerReport.from_json(o)
              for o in json.loads(await snapfs_cli.ok("status", "--json", *flags))]
    assert sum(r.requests for r in before) > 0 and sum(r.bytes_fetched for r in before) > 0
    if snapfs_cli.daemon is not None:
        await snapfs_cli.daemon.stop()  # now the same numbers come from the records
    after = [LayerReport.from_json(o)
             for o in json.loads(await snapfs_cli.ok("status", "--json", *flags))]
    assert [(r.layer_id, r.requests, r.bytes_fetched, r.demand_bytes) for r in after] == \
        [(r.layer_id, r.requests, r.bytes_fetched, r.demand_bytes) for r in before]
