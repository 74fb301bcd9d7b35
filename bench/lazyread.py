"""``python -m bench lazyread``: sequential read throughput through one lazy eStargz layer.

A measurement script, not a test (issue #7). In one process: build an eStargz layer holding
one large random file, push it to a private ``docker-registry``, index it lazily, expose it
through snapfs's own FUSE mount (``LayerFS`` + ``LazyLayerView`` + ``LayerFetcher``), then
read the file with ``dd bs=1M`` in a subprocess (the FUSE server runs on this process's trio
loop, so the reader must not):

    cold      every chunk comes from the registry (the chunk cache starts empty)
    cached    chunks all in the chunk cache, page caches dropped: the case issue #7 is about
    paged     read again without dropping: the kernel's page cache of the FUSE file

Prints MB/s (10^6 bytes per second) per phase, plus the FUSE read requests and their mean
size, and the bytes fetched. Needs root (drop_caches, the FUSE mount).
"""

from __future__ import annotations

import argparse
import io
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trio

from bench.measure import drop_caches
from content.chunkcache import ChunkCache
from content.chunkedtar import DEFAULT_CHUNK_SIZE
from content.errors import FailedPrecondition, Internal
from content.estargz import build_estargz
from content.lazyformat import load_lazy_layer
from content.reference import parse_reference
from content.registry import open_registry
from content.tarlayer import Entry, build_tar
from snapfs.dev.localregistry import run_local_registry
from snapfs.fuse import LayerFS, serve_fuse
from snapfs.lazy.fetcher import LayerFetcher
from snapfs.lazy.view import LazyLayerView

FILE = "data/big.bin"
LAYER_ID = "bench-layer"


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    seconds: float
    nbytes: int
    fuse_reads: int
    fetched: int

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / self.seconds / 1e6

    def line(self) -> str:
        mean = self.nbytes / self.fuse_reads / 1024 if self.fuse_reads else 0.0
        return (f"{self.name:<7} {self.mb_per_s:8.0f} MB/s  {self.nbytes / 1e6:7.0f} MB in "
                f"{self.seconds:6.2f} s  fuse reads {self.fuse_reads:6d} (mean {mean:5.0f} KiB)"
                f"  fetched {self.fetched / 1e6:6.0f} MB")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("lazyread", help="sequential read through a lazy eStargz layer")
    p.add_argument("--size-mib", type=int, default=256, help="file size (default 256 MiB)")
    p.add_argument("--chunk-mib", type=int, default=DEFAULT_CHUNK_SIZE >> 20,
                   help="eStargz chunk size (default: the converter's)")
    p.add_argument("--reps", type=int, default=2, help="repetitions of the cached phase")
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp"),
                   help="scratch space for the registry, cache and mount (removed after)")


def build_layer(size: int, chunk: int) -> bytes:
    """The eStargz blob of one random (incompressible) file of ``size`` bytes (blocking)."""
    rnd = random.Random(7)
    # randbytes overflows past 256 MiB in one call; 16 MiB pieces also keep it quick.
    content = b"".join(rnd.randbytes(min(16 << 20, size - o)) for o in range(0, size, 16 << 20))
    tar = build_tar([Entry("data", "dir"), Entry(FILE, data=content)])
    del content
    built = build_estargz(io.BytesIO(tar), chunk_size=chunk)
    if built.blob is None:
        raise Internal("bench lazyread: the eStargz writer returned no blob")
    return built.blob


async def _dd(path: Path) -> float:
    """Seconds ``dd`` takes to read ``path`` sequentially in 1 MiB requests."""
    start = trio.current_time()
    await trio.run_process(["dd", f"if={path}", "of=/dev/null", "bs=1M"],
                           capture_stdout=True, capture_stderr=True)
    return trio.current_time() - start


async def run_lazyread(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise FailedPrecondition("bench lazyread needs root (drop_caches, the FUSE mount)")
    size = args.size_mib << 20
    print(f"building a {args.size_mib} MiB eStargz layer ({args.chunk_mib} MiB chunks)…")
    blob = await trio.to_thread.run_sync(build_layer, size, args.chunk_mib << 20)
    with tempfile.TemporaryDirectory(prefix="snapfs-lazyread-", dir=args.workdir) as tmp:
        work = Path(tmp)
        (work / "registry").mkdir()
        with run_local_registry(work / "registry") as reg:
            async with open_registry(insecure=True) as registry:
                ref = parse_reference(f"{reg.host}/bench/lazyread:1")
                digest = await registry.push_blob(ref, blob, None)
                blob_size = len(blob)
                del blob

                async def read_range(offset: int, length: int) -> bytes:
                    return await registry.fetch_range(ref, digest, offset, length)

                layer = await load_lazy_layer(read_range, blob_size, what="bench layer")
                if layer is None:
                    raise Internal("bench lazyread: the blob did not index as a lazy layer")
                cache = ChunkCache(work / "chunks")
                fetcher = LayerFetcher(registry, ref, digest, layer, cache)
                fs = LayerFS(work / "fuse")
                fs.add_layer(LazyLayerView(LAYER_ID, layer, fetcher))
                target = work / "fuse" / LAYER_ID / FILE
                phases: list[Phase] = []
                async with trio.open_nursery() as nursery:
                    await nursery.start(serve_fuse, fs, work / "fuse")
                    try:
                        plan = ["cold"] + ["cached"] * args.reps + ["paged"]
                        for name in plan:
                            if name != "paged":
                                await drop_caches()
                            reads = fs.stats(LAYER_ID).requests.get("read", 0)
                            fetched = fetcher.stats.bytes_fetched
                            seconds = await _dd(target)
                            phases.append(Phase(
                                name, seconds, size,
                                fs.stats(LAYER_ID).requests.get("read", 0) - reads,
                                fetcher.stats.bytes_fetched - fetched))
                            print(phases[-1].line(), flush=True)
                    finally:
                        nursery.cancel_scope.cancel()
    return 0


__all__ = ["Phase", "add_parser", "build_layer", "run_lazyread"]
