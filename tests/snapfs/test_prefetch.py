"""Startup-first prefetch and background fetch: options, the rate limit, priority over the
background queue (in memory), and against the real registry + FUSE + overlayfs: a startup set
saves the first container's on-demand fetches, and with background fetch off nothing beyond
what is read (and the startup set) is fetched."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from content.errors import InvalidArgument
from content.estargz import build_estargz
from content.image import Layer
from content.mediatypes import OCI_LAYER_GZIP
from content.tarlayer import build_tar
from snapfs.config import parse_config
from snapfs.lazy.layers import layer_id
from snapfs.lazy.open import fetch_options
from snapfs.lazy.schedule import FetchOptions, TokenBucket, parse_rate, startup_paths
from tests.fixtures.images import ImageFactory
from tests.fixtures.registry import RegistryServer
from tests.snapfs.test_hotpath import active_mount
from tests.snapfs.test_lazy_pull import (
    CHUNK,
    big_so,
    bottom_entries,
    lazy_puller,
    need_lazy,
    read_file,
)

STARTUP = ["usr/bin/tool", "etc/passwd", "usr/lib/big.so"]


def test_parse_rate() -> None:
    assert parse_rate(0) == 0
    assert parse_rate(1234) == 1234
    assert parse_rate("50MB") == 50_000_000
    assert parse_rate("1.5 MiB/s") == 1_572_864
    assert parse_rate("800k") == 800_000
    for bad in ("fast", -1, True, "5 parsecs"):
        with pytest.raises(InvalidArgument, match="rate"):
            parse_rate(bad)


def test_fetch_options_from_the_config_file() -> None:
    assert fetch_options(parse_config("")) == FetchOptions()
    opts = fetch_options(parse_config('[fetch]\nbackground = false\nbackground_rate = "50MB"\n'
                                      "background_concurrency = 3\nconcurrency = 8\n"))
    assert (opts.background, opts.background_rate, opts.background_concurrency,
            opts.concurrency) == (False, 50_000_000, 3, 8)
    with pytest.raises(InvalidArgument, match="background"):
        fetch_options(parse_config('[fetch]\nbackground = "yes"\n'))
    with pytest.raises(InvalidArgument, match="background_concurrency"):
        fetch_options(parse_config("[fetch]\nbackground_concurrency = 0\n"))


def test_token_bucket_spaces_requests_at_the_rate() -> None:
    bucket = TokenBucket(1000, burst=1000)
    assert bucket.reserve(1000, now=0.0) == 0.0  # the burst
    assert bucket.reserve(500, now=0.0) == pytest.approx(0.5)  # in debt: wait
    assert bucket.reserve(500, now=0.5) == pytest.approx(0.5)  # still behind the first
    assert bucket.reserve(4000, now=10.0) == pytest.approx(3.0)  # larger than the burst
    assert TokenBucket(0).reserve(10 ** 9, now=0.0) == 0.0  # unlimited


def test_startup_set_prefers_the_landmark() -> None:
    assert startup_paths(["a"], ["b"]) == ["a"]
    assert startup_paths([], ["b"]) == []  # .no.prefetch.landmark: the author said none
    assert startup_paths(None, ["b"]) == ["b"]


def startup_image(prioritized: list[str]) -> Layer:
    built = build_estargz(io.BytesIO(build_tar(bottom_entries("startup"))), chunk_size=CHUNK,
                          prioritized=prioritized)
    assert built.blob is not None
    return Layer(built.blob, OCI_LAYER_GZIP, built.diff_id, dict(built.annotations))


@pytest.mark.parametrize("prioritized", [True, False], ids=["startup-set", "none"])
async def test_startup_set_saves_on_demand_fetches(
        tmp_path: Path, registry: RegistryServer, repo_name: str,
        image_factory: ImageFactory, prioritized: bool) -> None:
    need_lazy()
    layer = startup_image(STARTUP if prioritized else [])
    pushed = await image_factory.push(registry, repo_name, [layer])
    ident = layer_id(layer.digest)
    # No locality window either: what arrives is exactly what was read or prefetched.
    async with lazy_puller(tmp_path / "root", FetchOptions(background=False, window=0)) \
            as (p, lazy, sn):
        result = await p.pull(pushed.ref)
        await lazy.wait_startup(ident)
        (status,) = lazy.layer_status()
        stats = status.stats
        async with active_mount(sn, "c1", str(result.record.chain_ids[-1]),
                                tmp_path / "c1") as rootfs:
            # The container's startup reads its startup files.
            for path in STARTUP:
                assert await read_file(rootfs / path)
            assert await read_file(rootfs / "usr/lib/big.so") == big_so("startup")
            if prioritized:
                assert stats.prefetch_requests >= 1 and stats.demand_requests == 0
                assert stats.prefetch_requests <= 2  # contiguous: merged into few requests
            else:
                assert stats.prefetch_requests == 0 and stats.demand_requests >= 1
            # Background off: nothing beyond what was read (and the startup set) arrives.
            # (80 docs of 4 KiB and a 200 KiB file are never read: ~530 KiB of random data.)
            read = 1024 * 1024 + 77 + 3004 + len("root:x:0:0:root:/root:/bin/sh\n")
            assert stats.background_requests == 0
            assert stats.bytes_fetched < layer.size - 400_000
            (status,) = lazy.layer_status()
            assert status.state == "lazy" and status.local_bytes == read
            assert lazy.fs.layer_ids() == [ident]
