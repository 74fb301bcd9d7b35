"""Acceptance for issue #6 items 4-5 with the real CLI, registry, FUSE, overlayfs and runc:
``snapfs run --record-profile`` → ``snapfs convert --prioritize`` puts the startup files
before the landmark; ``snapfs status --json`` and the metrics endpoint show lazy layers."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from content.convert import convert_image
from content.digest import Digest
from content.image import parse_manifest
from content.lazyformat import load_lazy_layer, prefetch_set
from content.reference import Reference, parse_reference
from content.registry import open_registry
from content.tarlayer import Entry
from snapfs.cli.status import table
from snapfs.client.reports import LayerReport
from tests.fixtures.images import ImageFactory
from tests.fixtures.registry import RegistryServer
from tests.snapfs import test_cli_run
from tests.snapfs.test_cli_run import EXIT_SNAPFS_ERROR, SnapfsCli
from tests.snapfs.test_gc import configure

snapfs_cli = test_cli_run.snapfs_cli
embedded_cli = test_cli_run.embedded_cli
short_dir = test_cli_run.short_dir

APP = [Entry("app", "dir"), Entry("app/a", data=b"first\n"), Entry("app/b", data=b"second\n"),
       Entry("app/unread", data=b"never\n")]


async def push_estargz(factory: ImageFactory, registry: RegistryServer, repo: str,
                       busybox_tree: Path, *, prioritize: list[str] | None = None,
                       ) -> tuple[Reference, Reference]:
    """The plain image and its eStargz conversion."""
    src = (await factory.push(registry, repo, [busybox_tree, APP])).ref
    dst = parse_reference(f"{registry.host}/{repo}:esgz")
    async with open_registry() as reg:
        await convert_image(reg, src, dst, format="estargz", prioritize=prioritize or ())
    return src, dst


async def startup_sets(ref: Reference) -> list[list[str] | None]:
    async with open_registry() as reg:
        resolved = await reg.resolve(ref)
        out = []
        for desc in parse_manifest(resolved.manifest_bytes).layers:
            digest = desc.digest

            async def read_range(offset: int, length: int, digest: Digest = digest) -> bytes:
                return await reg.fetch_range(ref, digest, offset, length)

            layer = await load_lazy_layer(read_range, desc.size, what=str(desc.digest),
                                          annotations=dict(desc.annotations))
            assert layer is not None
            out.append(prefetch_set(layer))
        return out


async def test_recorded_profile_prioritizes_startup_files(
        snapfs_cli: SnapfsCli, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, busybox_tree: Path, tmp_path: Path) -> None:
    src, esgz = await push_estargz(image_factory, registry, repo_name, busybox_tree)
    profile = tmp_path / "p.txt"
    res = await snapfs_cli("run", "--rm", "-q", "--record-profile", str(profile), str(esgz),
                           "sh", "-c", "cat /app/b >/dev/null; cat /app/a; cat /app/b")
    assert (res.status, res.stdout) == (0, "first\nsecond\n"), res.stderr
    lines = profile.read_text().splitlines()
    assert lines[0].startswith("# snapfs startup profile")
    paths = [p for p in lines if not p.startswith("#")]
    assert "bin/busybox" in paths
    assert [p for p in paths if p.startswith("app/")] == ["app/b", "app/a"]

    dst = parse_reference(f"{registry.host}/{repo_name}:prio")
    async with open_registry() as reg:
        await convert_image(reg, src, dst, format="estargz",
                            prioritize=paths)
    base, app = await startup_sets(dst)
    assert app == ["app/b", "app/a"]
    assert base is not None and "bin/busybox" in base


async def test_record_profile_needs_a_directory_that_exists(
        embedded_cli: SnapfsCli, tmp_path: Path) -> None:
    res = await embedded_cli("run", "--record-profile", str(tmp_path / "no" / "p.txt"),
                             "127.0.0.1:1/x", "true")
    assert res.status == EXIT_SNAPFS_ERROR
    assert "no such directory" in res.stderr


async def test_status_shows_lazy_layers_after_a_read(
        snapfs_cli: SnapfsCli, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, busybox_tree: Path, tmp_path: Path) -> None:
    _, esgz = await push_estargz(image_factory, registry, repo_name, busybox_tree)
    # Background fetch off: these small layers could otherwise be materialised before the
    # container starts, and its reads would not pass through FUSE at all (CI saw 0 reads).
    flags = await configure(snapfs_cli, tmp_path, "[fetch]\nbackground = false\n")
    await snapfs_cli.ok("run", "--rm", "-q", *flags, str(esgz), "cat", "/app/a")
    reports = [LayerReport.from_json(o)
               for o in json.loads(await snapfs_cli.ok("status", "--json", *flags))]
    assert len(reports) == 2
    assert {r.image for r in reports} == {str(esgz)}
    assert {r.format for r in reports} == {"estargz"}
    for r in reports:
        assert r.state in ("lazy", "fetching", "local")
        assert 0 < r.local_bytes <= r.total_bytes  # the read chunks stay in the cache
    text = await snapfs_cli.ok("status", *flags)
    assert text.splitlines()[0].split() == ["LAYER", "IMAGE", "FORMAT", "STATE", "LOCAL/TOTAL",
                                            "FETCHED", "REQUESTS", "HITS", "WINDOW"]
    assert table(reports).splitlines()[0] == text.splitlines()[0]
    if snapfs_cli.daemon is None:
        return  # counters live in the process that served the reads: gone with it
    assert sum(r.bytes_fetched for r in reports) > 0
    assert sum(r.requests for r in reports) > 0
    assert sum(r.fuse_requests.get("read", 0) for r in reports) > 0
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://{snapfs_cli.daemon.metrics_address}/metrics")).text
    # Sample lines are "name{labels} value"; values are Go-formatted (1.028321e+06).
    samples = {name: float(value) for name, _, value in
               (line.rpartition(" ") for line in text.splitlines() if not line.startswith("#"))}
    # The background fetch goes on meanwhile: the scrape lies between the two status reads.
    after = {r.layer_id: r for r in (LayerReport.from_json(o) for o in
                                     json.loads(await snapfs_cli.ok("status", "--json",
                                                                    *flags)))}
    for r in reports:
        later = after[r.layer_id]
        fetched = samples[f'snapfs_fetch_bytes_total{{layer="{r.layer_id}"}}']
        assert r.bytes_fetched <= fetched <= later.bytes_fetched
        shown = [state for state in ("lazy", "fetching", "local", "broken")
                 if samples[f'snapfs_layer_state{{layer="{r.layer_id}",state="{state}"}}'] == 1.0]
        # One state, and one it had between the reads (it may have passed through fetching).
        passed = {r.state, later.state} | ({"fetching"} if r.state != later.state else set())
        assert len(shown) == 1 and shown[0] in passed, (shown, r.state, later.state)
