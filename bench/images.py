"""The benchmark's images: built here from real root filesystems, in every layer format.

Root filesystems are cached under ``<workdir>/rootfs/<name>`` (a Debian one takes ~30 s from
the mirror with ``mmdebstrap``); images are rebuilt from them on every run, so the blobs
always match this tree's converters. Each image is one layer, pushed as several tags::

    gzip            plain tar+gzip (what a registry usually holds): the native path
    gzip-index      the same image, unmodified, in ``bench/<name>-indexed`` with a side index
                    pushed as a referrer (``snapfs index --push``): lazy without conversion
    estargz         eStargz, no startup profile (".no.prefetch.landmark")
    estargz-pub     the same eStargz image, not rebuilt, in ``bench/<name>-published`` with a
                    startup profile recorded by snapfs and published as a referrer
                    (``snapfs profile push``)
    zstdchunked     zstd:chunked, no profile
    estargz-prof    eStargz with the recorded startup files first (needs a profile)
    zstdchunked-prof
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from content import mediatypes as mt
from content.errors import FailedPrecondition, InvalidArgument, Unavailable
from content.estargz import build_estargz
from content.image import Image, Layer, make_image, make_layer
from content.reference import parse_reference
from content.registry import Registry
from content.tarlayer import build_tar, entries_from_dir
from content.zstdchunked import build_zstd_chunked

log = logging.getLogger(__name__)

PY_WORKLOAD = ("python3", "-c", 'import json, sqlite3, email, http.server; print("ready")')
GCC_WORKLOAD = ("sh", "-c", "printf '#include <stdio.h>\\nint main(void){puts(\"ready\");"
                "return 0;}\\n' > /tmp/h.c && gcc -o /tmp/h /tmp/h.c && /tmp/h")
BUSYBOX_APPLETS = ("sh", "echo", "cat", "ls", "find", "true", "sleep", "busybox")

LAZY_FORMATS = ("estargz", "zstdchunked")
INDEXED = "gzip-index"
PUBLISHED = "estargz-pub"
build_limiter = trio.CapacityLimiter(1)


# Reads every byte of every regular file under /usr, then says so (one line, timed).
READ_USR_WORKLOAD = ("sh", "-c", "find /usr -type f -exec cat {} + > /dev/null && echo ready")


@dataclass(frozen=True, slots=True)
class ImageSpec:
    name: str
    workload: tuple[str, ...]  # the "start" workload
    packages: tuple[str, ...] | None  # Debian packages (mmdebstrap), None for busybox
    read_workload: tuple[str, ...] = READ_USR_WORKLOAD


IMAGES: dict[str, ImageSpec] = {
    "busybox": ImageSpec("busybox", ("/bin/echo", "ready"), None),
    "debian-python": ImageSpec("debian-python", PY_WORKLOAD, ("python3",)),
    "debian-gcc": ImageSpec("debian-gcc", GCC_WORKLOAD, ("python3", "gcc", "libc6-dev")),
}


def largest_file(rootfs: Path) -> str:
    """The largest regular file of the image (relative path): the sequential-read subject,
    found rather than named, since package versions move paths (cc1, libpython…)."""
    best, size = "", -1
    for dirpath, _, filenames in os.walk(rootfs):
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_size > size:
                best, size = os.path.relpath(path, rootfs), st.st_size
    return best


def spec(name: str) -> ImageSpec:
    try:
        return IMAGES[name]
    except KeyError:
        raise InvalidArgument(f"bench image {name!r}: unknown; have {', '.join(IMAGES)}") from None


def _busybox_rootfs(root: Path) -> None:
    """The static busybox at /usr/bin/busybox (so the read-usr workload has bytes to read),
    its applets as symlinks in /bin."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not os.access(busybox, os.X_OK):
        raise FailedPrecondition("busybox image: no static busybox on this host (busybox-static)")
    for d in ("bin", "etc", "proc", "dev", "sys", "tmp", "usr/bin"):
        (root / d).mkdir(parents=True)
    shutil.copy2(busybox, root / "usr" / "bin" / "busybox")
    for applet in BUSYBOX_APPLETS:
        os.symlink("../usr/bin/busybox", root / "bin" / applet)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")


def _debian_rootfs(root: Path, packages: Sequence[str]) -> None:
    if not shutil.which("mmdebstrap"):
        raise FailedPrecondition("Debian images need mmdebstrap (apt-get install mmdebstrap)")
    cmd = ["mmdebstrap", "--variant=minbase", f"--include={','.join(packages)}",
           "--quiet", "bookworm", str(root)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise Unavailable(f"mmdebstrap for {root.name} exited {res.returncode}: "
                          f"{res.stderr.strip()[-500:]}")


def ensure_rootfs_sync(image: ImageSpec, cache: Path) -> Path:
    """The cached rootfs of ``image``, built (into a temp dir, then renamed) if missing."""
    root = cache / image.name
    if root.is_dir() and image.packages is None:
        shutil.rmtree(root)  # busybox: cheap, and its layout may have changed
    if root.is_dir():
        return root
    tmp = cache / f"new-{image.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if image.packages is None:
        _busybox_rootfs(tmp)
    else:
        log.warning("building %s rootfs with mmdebstrap (Debian mirror, ~30 s)", image.name)
        _debian_rootfs(tmp, image.packages)
    tmp.rename(root)
    return root


def _lazy_layer(tar: bytes, fmt: str, prioritized: Sequence[str]) -> Layer:
    if fmt == "estargz":
        res = build_estargz(io.BytesIO(tar), prioritized=prioritized)
        media_type = mt.OCI_LAYER_GZIP
    else:
        res = build_zstd_chunked(io.BytesIO(tar), prioritized=prioritized)
        media_type = mt.OCI_LAYER_ZSTD
    assert res.blob is not None
    return Layer(res.blob, media_type, res.diff_id, res.annotations)


def build_variants_sync(rootfs: Path, profile: Sequence[str] | None) -> dict[str, Image]:
    """Every pushed form of one rootfs (see the module docstring); CPU-bound, run in a thread."""
    tar = build_tar(entries_from_dir(rootfs))
    out = {"gzip": make_image([make_layer(tar, "gzip")])}
    out[INDEXED] = out["gzip"]  # the same bytes; indexed once pushed (bench.run)
    for fmt in LAZY_FORMATS:
        out[fmt] = make_image([_lazy_layer(tar, fmt, ())])
        if profile:
            out[f"{fmt}-prof"] = make_image([_lazy_layer(tar, fmt, profile)])
    out[PUBLISHED] = out["estargz"]  # the same bytes; its profile is published (bench.run)
    return out


async def build_variants(image: ImageSpec, cache: Path,
                         profile: Sequence[str] | None = None) -> tuple[Path, dict[str, Image]]:
    def build() -> tuple[Path, dict[str, Image]]:
        root = ensure_rootfs_sync(image, cache)
        return root, build_variants_sync(root, profile)

    return await trio.to_thread.run_sync(build, limiter=build_limiter)


async def push_image(registry: Registry, ref_text: str, image: Image) -> None:
    """Blobs first, then the manifest that names them (a registry rejects the reverse)."""
    ref = parse_reference(ref_text)
    for layer in image.layers:
        await registry.push_blob(ref, layer.blob, layer.digest)
    await registry.push_blob(ref, image.config, image.config_descriptor.digest)
    await registry.push_manifest(ref, image.manifest, image.media_type)


def image_bytes(image: Image) -> int:
    return sum(layer.size for layer in image.layers) + len(image.config) + len(image.manifest)
