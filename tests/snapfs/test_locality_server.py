"""Locality through ``snapfs fuse-server`` (issue #11 item 3): a burst of reads in one
directory costs far fewer requests than files, and ``snapfs status`` counts the hits.

A real daemon, its FUSE server, a registry, and an overlay "container" whose reader process
reads a third of a package's modules, scattered and not in tar order (as imports do). Background
fetching is off and the locality window small, so every request counted is one a read
caused; the directory taken aside at the second miss is what saves them.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path

import trio

from content.estargz import build_estargz
from content.image import Layer
from content.mediatypes import OCI_LAYER_GZIP
from content.tarlayer import Entry, build_tar
from tests.fixtures.daemon import SNAPFS, SnapfsDaemon
from tests.fixtures.images import ImageFactory
from tests.fixtures.registry import RegistryServer
from tests.snapfs.test_fuse_server import T, containers
from tests.snapfs.test_lazy_pull import need_lazy, pull_through

CONFIG = "[fetch]\nbackground = false\nwindow = 32768\n"  # a window of one file or so
MODULES = 120  # in pkg/; the reader reads READ of them, scattered
READ = 40


def package(seed: str) -> dict[str, bytes]:
    rnd = random.Random(seed)
    out = {f"pkg/m{i:03d}.py": rnd.randbytes(rnd.randrange(15_000, 25_000))
           for i in range(MODULES)}
    out.update({f"other/f{i:02d}": rnd.randbytes(20_000) for i in range(10)})
    return out


def image_layer(contents: dict[str, bytes]) -> Layer:
    entries = [Entry("pkg", "dir", mtime=T), Entry("other", "dir", mtime=T)]
    entries += [Entry(p, data=d, mtime=T) for p, d in contents.items()]
    built = build_estargz(io.BytesIO(build_tar(entries)), chunk_size=64 * 1024)
    assert built.blob is not None
    return Layer(built.blob, OCI_LAYER_GZIP, built.diff_id, dict(built.annotations))


async def status(daemon: SnapfsDaemon) -> list[dict[str, object]]:
    res = await trio.run_process(
        [str(SNAPFS), "status", "--json", "--root", str(daemon.root), "--state",
         str(daemon.state), "--address", str(daemon.address)], capture_stdout=True)
    reports = json.loads(res.stdout)
    assert isinstance(reports, list)
    return reports


async def test_a_burst_in_one_directory_costs_fewer_requests_than_files(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, snapfs_daemon: SnapfsDaemon) -> None:
    need_lazy()
    snapfs_daemon.config_text = CONFIG
    await snapfs_daemon.restart(kill=False)
    contents = package(repo_name)
    pushed = await image_factory.push(registry, repo_name, [image_layer(contents)])
    modules = random.Random(repo_name).sample(
        sorted(p for p in contents if p.startswith("pkg/")), READ)
    async with snapfs_daemon.client() as client:
        result = await pull_through(client, tmp_path, pushed.ref)
        assert result.lazy_layers == 1
        assert snapfs_daemon.fuse_server_pid is not None  # reads run in the FUSE server
        async with containers(client, str(result.record.chain_ids[-1]), tmp_path / "c",
                              1) as (reader,):
            await reader.ask(modules)
            for path in modules:
                ok, got, digest = await reader.answer()
                assert (ok, got) == ("ok", path)
                assert digest == hashlib.sha256(contents[path]).hexdigest()
        (report,) = await status(snapfs_daemon)
    requests = int(str(report["demand_requests"]))
    # Two misses, then the rest of pkg/ aside (a span or three around what was fetched).
    assert 2 <= requests <= 6 < READ, report
    assert int(str(report["window_hits"])) >= READ - 4, report
    # Nothing of other/ came along: pkg/ and the windows only.
    assert int(str(report["bytes_fetched"])) < sum(
        len(d) for p, d in contents.items() if p.startswith("pkg/")) * 1.2, report

