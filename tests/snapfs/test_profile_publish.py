"""Startup profiles that travel with the image (issue #11 item 4), with the real CLI, daemon,
registry, FUSE, overlayfs and runc: the first container of an image records one (on by
default), ``snapfs profile push`` publishes it as a referrer of the image manifest, and a
second, fresh snapfs root finds it on its lazy pull and fetches its files before the
container reads them — counted as on-demand requests, fewer than without it. A garbage
profile, one for another manifest, or one naming files that do not exist changes nothing
but one warning."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from content.convert import convert_image
from content.digest import Digest, parse_digest
from content.profiledoc import ARTIFACT_TYPE, artifact_manifest, encode_document, make_profile
from content.reference import Reference, parse_reference
from content.referrers import EMPTY
from content.registry import open_registry
from content.tarlayer import Entry
from snapfs.client.quickstatus import status_socket
from snapfs.client.reports import LayerReport
from snapfs.client.status import query_status
from snapfs.sys.mountops import detach_all_under
from tests.fixtures.daemon import SnapfsDaemon, free_port
from tests.fixtures.images import ImageFactory
from tests.fixtures.realenv import need_binary, need_root
from tests.fixtures.registry import FaultProxy, RegistryServer
from tests.snapfs.test_cli_run import SNAPFS

WAIT = 60.0
# Counts, not times: nothing but reads (and a profile) may fetch, one chunk per miss.
CONFIG = ("[fetch]\nbackground = false\nwindow = 0\n"
          "[profile]\nrecord_seconds = 1.0\n")
FILES = 24
READ = [3, 17, 0, 9, 21, 5, 12]  # the app files the container reads, in this order
COMMAND = ["sh", "-c", " ".join(f"cat /app/f{i} >/dev/null;" for i in READ) + " echo done"]


def app_layer(seed: str) -> list[Entry]:
    rnd = random.Random(seed)
    return [Entry("app", "dir"),
            *(Entry(f"app/f{i}", data=rnd.randbytes(40_000)) for i in range(FILES))]


async def push_estargz(factory: ImageFactory, registry: RegistryServer | FaultProxy, repo: str,
                       busybox_tree: Path) -> Reference:
    src = (await factory.push(registry, repo, [busybox_tree, app_layer(repo)])).ref
    dst = parse_reference(f"{registry.host}/{repo}:esgz")
    async with open_registry() as reg:
        await convert_image(reg, src, dst, format="estargz")
    return dst


@asynccontextmanager
async def snapfs_node(tmp: Path, name: str, config: str = CONFIG,
                      ) -> AsyncIterator[SnapfsDaemon]:
    """A fresh snapfs root with its own daemon (state under a short /tmp path)."""
    need_root("root, to mount overlays and run runc containers")
    need_binary("runc")
    short = Path(tempfile.mkdtemp(prefix=f"snapfs-{name}-", dir="/tmp"))
    daemon = SnapfsDaemon(tmp / name / "root", short / "snapfs.sock", short / "state",
                          tmp / f"{name}.log", free_port())
    daemon.config_text = config
    (tmp / name).mkdir(parents=True)
    try:
        await daemon.start()
        yield daemon
    finally:
        with trio.CancelScope(shield=True):
            await daemon.stop()
            # With a separate FUSE server (branch h-restart), that process is ours too.
            kill_fuse_server = getattr(daemon, "kill_fuse_server", None)
            if kill_fuse_server is not None:
                await kill_fuse_server()
            await trio.to_thread.run_sync(detach_all_under, short / "state")
            await trio.to_thread.run_sync(detach_all_under, daemon.root)
            shutil.rmtree(short, ignore_errors=True)


async def snapfs(node: SnapfsDaemon, command: str, *args: str,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [str(SNAPFS), *command.split(), "--root", str(node.root), "--state",
            str(node.state), "--address", str(node.address), *args]
    with trio.fail_after(WAIT):
        proc = await trio.run_process(argv, check=False, stdin=subprocess.DEVNULL,
                                      capture_stdout=True, capture_stderr=True)
    res = subprocess.CompletedProcess(argv, proc.returncode, proc.stdout.decode(),
                                      proc.stderr.decode())
    if check:
        assert res.returncode == 0, f"snapfs {command} {args}: {res.returncode}\n{res.stderr}"
    return res


async def run_app(node: SnapfsDaemon, ref: Reference) -> dict[str, LayerReport]:
    """Run the reading container once; the node's layer reports after it, by layer."""
    res = await snapfs(node, "run", "--rm", "-q", str(ref), *COMMAND)
    assert res.stdout == "done\n", res.stderr
    return {r.digest: r for r in await query_status(status_socket(node.state))}


async def wait_for_profile(node: SnapfsDaemon) -> Path:
    with trio.fail_after(WAIT):
        while True:
            found = list((node.root / "profiles" / "sha256").glob("*.json"))
            if found:
                return found[0]
            await trio.sleep(0.1)


async def app_digest(ref: Reference) -> Digest:
    """The app layer: the image's top one."""
    async with open_registry() as reg:
        return parse_digest(str((await reg.resolve(ref)).manifest["layers"][-1]["digest"]))


def demand(reports: dict[str, LayerReport]) -> int:
    return sum(r.demand_requests for r in reports.values())


def warnings(node: SnapfsDaemon) -> list[str]:
    return [line for line in node.log.read_text(errors="replace").splitlines()
            if "WARNING" in line and "profile" in line]


async def test_a_published_profile_is_prefetched_by_a_fresh_root(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, busybox_tree: Path) -> None:
    ref = await push_estargz(image_factory, registry, repo_name, busybox_tree)
    async with snapfs_node(tmp_path, "a") as a:
        first = await run_app(a, ref)  # no profile anywhere yet: recorded (on by default)
        await wait_for_profile(a)
        shown = json.loads((await snapfs(a, "profile show", "--local", "--json",
                                         str(ref))).stdout)
        assert shown["source"] == "local"
        doc = shown["profile"]
        app = [p for _, p in doc["files"] if p.startswith("app/")]
        assert app == [f"app/f{i}" for i in READ]  # first-read order
        assert "bin/busybox" in [p for _, p in doc["files"]]
        pushed = await snapfs(a, "profile push", str(ref))
        assert pushed.stdout.startswith("pushed sha256:"), pushed.stdout

    async with snapfs_node(tmp_path, "b") as b:
        second = await run_app(b, ref)
        log = b.log.read_text(errors="replace")
        assert "profile of" in log and "found" in log
    # Without the profile every file read was an on-demand miss; with it, the app layer's
    # files (and busybox) were local before the container read them.
    app_layer = str(await app_digest(ref))
    assert first[app_layer].demand_requests >= len(READ)
    assert second[app_layer].demand_requests == 0
    assert second[app_layer].prefetch_requests >= 1
    assert second[app_layer].prefetch_requests < len(READ)  # merged requests
    assert demand(second) < demand(first)
    assert warnings(b) == []


async def push_bad_profile(ref: Reference, kind: str) -> None:
    async with open_registry() as reg:
        subject = (await reg.resolve(ref)).descriptor
        app = await app_digest(ref)
        if kind == "garbage":
            blob = b"\x89PNG not a profile at all"
        elif kind == "missing-file":
            blob = encode_document(make_profile(subject.digest, [(app, "app/f3"),
                                                                 (app, "app/no-such-file")]))
        else:  # another manifest's profile, under this one's subject
            other = parse_digest("sha256:" + "ab" * 32)
            blob = encode_document(make_profile(other, [(app, "app/f3")]))
        await reg.push_blob(ref, EMPTY)
        await reg.push_blob(ref, blob)
        await reg.push_referrer(ref, artifact_manifest(subject.media_type, subject.digest,
                                                       subject.size, blob), ARTIFACT_TYPE)


async def test_a_bad_profile_changes_nothing_but_one_warning(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, busybox_tree: Path) -> None:
    ref = await push_estargz(image_factory, registry, repo_name, busybox_tree)
    async with snapfs_node(tmp_path, "base") as base:
        baseline = await run_app(base, ref)
    for kind in ("garbage", "missing-file", "wrong-subject"):
        async with snapfs_node(tmp_path, kind) as node:
            # Only the last pushed profile counts; earlier bad ones are taken off first.
            await snapfs(node, "profile rm --remote", str(ref))
            await push_bad_profile(ref, kind)
            got = await run_app(node, ref)
            assert len(warnings(node)) == 1, (kind, warnings(node))
        assert {d: (r.demand_requests, r.prefetch_requests) for d, r in got.items()} == {
            d: (r.demand_requests, r.prefetch_requests) for d, r in baseline.items()}, kind


def lookups(proxy: FaultProxy) -> int:
    """Requests that look for referrers: the API, or the fallback tag."""
    return sum(1 for _, path, _ in proxy.log
               if "/referrers/" in path or "/manifests/sha256-" in path)


async def test_a_pull_without_a_profile_costs_one_lookup_request(
        tmp_path: Path, registry: RegistryServer, repo_name: str, fault_proxy: Any,
        image_factory: ImageFactory, busybox_tree: Path) -> None:
    proxy: FaultProxy = fault_proxy(registry.url)
    one = await push_estargz(image_factory, proxy, repo_name, busybox_tree)
    two = await push_estargz(image_factory, proxy, f"{repo_name}-2", busybox_tree)
    async with snapfs_node(tmp_path, "n") as node:
        proxy.log.clear()
        await run_app(node, one)
        # Two lazy layers, one manifest: one lookup. Debian's docker-registry has no
        # referrers API: 404, then the fallback tag.
        assert lookups(proxy) == 2
        await run_app(node, two)
        assert lookups(proxy) == 3  # that registry is known now: the tag only
        await snapfs(node, "pull", str(one))
        await run_app(node, one)
        assert lookups(proxy) == 3  # pulled already: a pull and a run look nothing up
        assert warnings(node) == []
