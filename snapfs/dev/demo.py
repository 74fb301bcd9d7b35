"""``snapfs demo``: the whole story on one machine, in about a minute.

1. build a small image from the host's busybox (plus a few MiB of application data that the
   container never reads), 2. serve it from a private docker-registry on 127.0.0.1,
3. convert it to eStargz with the startup file prioritised, 4. pull it lazily with an
in-process snapfs (its own root, FUSE included) and run a container from it with runc,
5. report bytes fetched against the image size and the time to the first line of output,
   and what happened: whether the layers were mounted lazily, or pulled in full because
   this process cannot serve FUSE (then it says so, with the fraction that was fetched),
6. remove everything it made.

Must not reach beyond 127.0.0.1 or leave anything behind unless ``keep`` is asked for.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import trio

from content.convert import convert_image
from content.image import make_image, make_layer
from content.push import push_image
from content.reference import parse_reference
from content.registry import open_registry
from content.tarlayer import Entry, build_tar, entries_from_dir
from runtime.spec import RunOptions
from snapfs.app.engine import open_engine
from snapfs.app.progress import human_bytes
from snapfs.app.run import run as run_image
from snapfs.config import Config, default_config, with_overrides
from snapfs.dev.busybox import make_busybox_rootfs
from snapfs.dev.localregistry import run_local_registry

STARTUP_SCRIPT = b"#!/bin/sh\necho \"hello from a lazily pulled container\"\ncat /app/motd\n"
# Says nothing about how it was fetched: the demo's last line tells what actually happened.
MOTD = b"this line comes from /app/motd, 60 bytes of a 24 MiB image\n"
ASSET_SIZE = 4 << 20  # per file: the bulk of the image, never read at startup
ASSETS = 6


@dataclass(frozen=True, slots=True)
class DemoReport:
    image: str
    image_bytes: int
    fetched_bytes: int
    requests: int
    lazy_layers: int
    first_output_seconds: float
    total_seconds: float
    exit_status: int
    background_bytes: int = 0  # fetched afterwards, to complete the layer (hot path)


def build_app_layer() -> bytes:
    entries = [Entry("app", "dir"),
               Entry("app/start.sh", data=STARTUP_SCRIPT, mode=0o755),
               Entry("app/motd", data=MOTD),
               Entry("app/assets", "dir")]
    for i in range(ASSETS):
        entries.append(Entry(f"app/assets/blob{i}.bin", data=os.urandom(ASSET_SIZE)))
    return build_tar(entries)


def verdict(report: DemoReport, layers: int) -> str:
    """What the numbers mean, truthfully: lazy (only what was read), or a full pull."""
    share = f"{100 * report.fetched_bytes / report.image_bytes:.1f}%"
    if report.lazy_layers == 0:
        return (f"no layer was mounted lazily (see the warning above), so the whole image was "
                f"pulled before the container started: {share} of it fetched")
    if report.lazy_layers < layers:
        return (f"{report.lazy_layers} of {layers} layers mounted lazily; {share} of the image "
                "fetched before the container's first output")
    return (f"only the files the container read were fetched before it started: {share} of "
            "the image")


async def run_demo(workdir: Path, out: TextIO = sys.stdout, *, lazy: str = "auto"
                   ) -> DemoReport:
    def say(text: str) -> None:
        print(text, file=out, flush=True)

    tree = make_busybox_rootfs(workdir / "busybox", fixed_mtimes=True)
    base = make_layer(build_tar(entries_from_dir(tree)), "gzip")
    app = make_layer(build_app_layer(), "gzip")
    image = make_image([base, app], {"Cmd": ["/app/start.sh"], "Env": ["PATH=/bin"]})
    image_bytes = sum(layer.size for layer in image.layers)
    with run_local_registry(workdir / "registry") as reg:
        say(f"[1/4] registry on {reg.host}; image: busybox + app data, "
            f"{human_bytes(image_bytes)} in {len(image.layers)} layers")
        src = parse_reference(f"{reg.host}/demo/app:plain")
        dst = parse_reference(f"{reg.host}/demo/app:estargz")
        async with open_registry() as registry:
            await push_image(registry, src, image)
            await convert_image(registry, src, dst, format="estargz",
                                prioritize=["app/start.sh", "app/motd", "bin/sh", "bin/busybox"])
        say(f"[2/4] converted to eStargz: {dst}")
        config: Config = with_overrides(default_config(), root=workdir / "root",
                                        state=workdir / "state", lazy=lazy)
        started = time.monotonic()
        first_line: list[float] = []
        read_fd, write_fd = os.pipe()
        async with open_engine(config, mode="embedded") as engine:
            say("[3/4] pulling lazily and running /app/start.sh")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_relay, read_fd, out, first_line, started)
                try:
                    status = await run_image(engine, str(dst), RunOptions(), remove=True,
                                             stdout=write_fd)
                finally:
                    os.close(write_fd)
            # The background fetch (completing the layer for the hot path) is counted apart:
            # what the container needed is everything else the registry sent.
            background = (engine.lazy.scheduler.stats.by_class["background"]
                          if engine.lazy is not None else None)
            bg_bytes = background.bytes if background is not None else 0
            fetched = engine.registry.stats.bytes_received - bg_bytes
            requests = engine.registry.stats.requests - (
                background.requests if background is not None else 0)
            lazy_layers = len(engine.lazy.layer_status()) if engine.lazy is not None else 0
        total = time.monotonic() - started
    report = DemoReport(str(dst), image_bytes, fetched, requests, lazy_layers,
                        (first_line[0] if first_line else total), total, status, bg_bytes)
    say(f"[4/4] first output after {report.first_output_seconds:.2f}s; fetched "
        f"{human_bytes(fetched)} of {human_bytes(image_bytes)} "
        f"({100 * fetched / image_bytes:.1f}%) in {requests} requests to start, "
        f"{human_bytes(bg_bytes)} more in the background to make the layer local; "
        f"exit status {status}")
    say(f"      {verdict(report, len(image.layers))}")
    return report


async def _relay(fd: int, out: TextIO, first_line: list[float], started: float) -> None:
    """Copy the container's stdout to ours, noting when its first line arrives."""
    stream = trio.lowlevel.FdStream(fd)
    async with stream:
        while chunk := await stream.receive_some(65536):
            if not first_line and b"\n" in chunk:
                first_line.append(time.monotonic() - started)
            out.write("    | " + chunk.decode(errors="replace").replace("\n", "\n    | ")
                      .removesuffix("    | "))
            out.flush()


async def demo_main(keep: bool = False, lazy: str = "auto") -> DemoReport:
    workdir = Path(tempfile.mkdtemp(prefix=f"snapfs-demo-{secrets.token_hex(3)}-",
                                    dir="/var/tmp"))
    try:
        return await run_demo(workdir, lazy=lazy)
    finally:
        if not keep:
            await trio.to_thread.run_sync(lambda: shutil.rmtree(workdir, ignore_errors=True))
