"""Converting registry images to eStargz and zstd:chunked against a real registry: the result
resolves, every layer is detected lazy from its footer with the TOC digest of its annotation,
and a native extraction of each converted layer gives exactly the tree of the original."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import trio

from content import mediatypes as mt
from content.compression import CompressionName
from content.convert import Format, assign_prioritized, convert_image
from content.descriptor import Descriptor, Platform, host_platform
from content.errors import InvalidArgument, NotFound
from content.image import Manifest, parse_config, parse_index, parse_manifest
from content.lazyformat import LazyLayer, load_lazy_layer, prefetch_set
from content.profilefile import parse_profile
from content.push import push_index
from content.reference import Reference, parse_reference
from content.registry import Registry, open_registry
from content.tarlayer import Entry
from content.unpack import apply_layer
from tests.fixtures.images import ImageFactory
from tests.fixtures.realenv import need_root
from tests.fixtures.registry import RegistryServer

CHUNK = 64 << 10
FORMATS: tuple[Format, ...] = ("estargz", "zstd:chunked")
LANDMARKS = {".prefetch.landmark", ".no.prefetch.landmark"}
# What a native extraction of an eStargz layer shows besides the image's files, as with
# stargz-snapshotter's own layers: the landmarks and the TOC, as regular files at the root.
FORMAT_FILES = frozenset({*LANDMARKS, "stargz.index.json"})
T = 1_600_000_000
# The second layer: every kind of entry and attribute a native extraction must reproduce.
RICH = [
    Entry("etc", "dir", mtime=T),
    Entry("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n",
          mtime=T + 1),
    Entry("app", "dir", mode=0o750, uid=1000, gid=1000, mtime=T + 2),
    Entry("app/big.bin", data=bytes(range(256)) * 1200, mode=0o600, mtime=T + 3),
    Entry("app/setuid", data=b"#!/bin/sh\necho hi\n", mode=0o4755, uid=1000, gid=100,
          mtime=T + 4),
    Entry("app/hard", "hardlink", linkname="app/setuid"),
    Entry("app/xattr.txt", data=b"x", mtime=T + 5, xattrs={"user.comment": b"hello \xff"}),
    Entry("app/link", "symlink", linkname="xattr.txt", mtime=T + 6),
    Entry("app/empty", mtime=T + 7),
    Entry("app/fifo", "fifo", mode=0o640, mtime=T + 8),
    Entry("app/null", "char", devmajor=1, devminor=3, mode=0o666, mtime=T + 9),
    Entry("bin", "dir", mtime=T + 10),
    Entry("bin/gone", "whiteout"),
    Entry("home", "dir", mode=0o711, mtime=T + 11),
    Entry("home", "opaque"),
]


def ref_of(registry: RegistryServer, repo: str, tag: str = "latest") -> Reference:
    return parse_reference(f"{registry.host}/{repo}:{tag}")


def tree(root: Path, ignore: frozenset[str] = FORMAT_FILES) -> dict[str, Any]:
    """Everything a user could observe about the files under ``root``."""
    out: dict[str, Any] = {}
    first_of_inode: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            if rel in ignore:
                continue
            st = os.lstat(path)
            fmt = stat.S_IFMT(st.st_mode)
            record: dict[str, Any] = {
                "type": fmt, "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid,
                "gid": st.st_gid, "mtime": st.st_mtime_ns,
                "xattrs": {k: os.getxattr(path, k, follow_symlinks=False)
                           for k in sorted(os.listxattr(path, follow_symlinks=False))}}
            if fmt == stat.S_IFREG:
                record["sha"] = hashlib.sha256(path.read_bytes()).hexdigest()
                record["nlink"] = st.st_nlink
                record["link_group"] = first_of_inode.setdefault(st.st_ino, rel)
            elif fmt == stat.S_IFLNK:
                record["target"] = os.readlink(path)
            elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
                record["rdev"] = st.st_rdev
                if st.st_rdev == 0:
                    del record["mtime"]  # a whiteout: made at extraction, not from the tar
            out[rel] = record
    return out


def tree_diff(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
    """(path, attribute, in a, in b) for every difference, for a readable failure."""
    out = []
    for path in sorted(a.keys() | b.keys()):
        ra, rb = a.get(path, {}), b.get(path, {})
        out += [(path, k, ra.get(k), rb.get(k)) for k in sorted(ra.keys() | rb.keys())
                if ra.get(k) != rb.get(k)]
    return out


async def fetch_image(reg: Registry, ref: Reference) -> tuple[Manifest, dict[str, Any]]:
    desc, data = await reg.fetch_manifest(ref, ref.object)
    manifest = parse_manifest(data, desc.media_type)
    config = json.loads(await reg.fetch_blob(ref, manifest.config))
    return manifest, config


async def lazy(reg: Registry, ref: Reference, desc: Descriptor,
               annotations: dict[str, str] | None = None) -> LazyLayer | None:
    async def read_range(offset: int, length: int) -> bytes:
        return await reg.fetch_range(ref, desc.digest, offset, length)
    return await load_lazy_layer(read_range, desc.size, what=str(desc.digest),
                                 annotations=annotations)


async def apply(blob: bytes, dest: Path) -> str:
    result = await trio.to_thread.run_sync(lambda: apply_layer(io.BytesIO(blob), dest))
    return str(result.diff_id)


def toc_digest_annotation(fmt: Format, desc: Descriptor) -> str:
    key = mt.ANN_STARGZ_TOC_DIGEST if fmt == "estargz" else mt.ANN_ZSTD_MANIFEST_CHECKSUM
    return desc.annotations[key]


async def check_converted(reg: Registry, src: Reference, dst: Reference, fmt: Format,
                          tmp: Path, ignore: frozenset[str] = FORMAT_FILES) -> None:
    old_manifest, old_config = await fetch_image(reg, src)
    new_manifest, new_config = await fetch_image(reg, dst)
    assert new_manifest.media_type == mt.OCI_MANIFEST
    assert len(new_manifest.layers) == len(old_manifest.layers)
    new_diff_ids = new_config["rootfs"]["diff_ids"]
    # The config is the old one with only the diff IDs replaced (history kept).
    assert {**new_config, "rootfs": None} == {**old_config, "rootfs": None}
    assert new_config["history"] == old_config["history"]
    media_type = mt.OCI_LAYER_GZIP if fmt == "estargz" else mt.OCI_LAYER_ZSTD
    for i, (old, new) in enumerate(zip(old_manifest.layers, new_manifest.layers, strict=True)):
        assert new.media_type == media_type
        layer = await lazy(reg, dst, new)
        assert layer is not None and layer.format == fmt
        assert str(layer.toc_digest) == toc_digest_annotation(fmt, new)
        assert await lazy(reg, dst, new, dict(new.annotations)) is not None
        assert new.annotations[mt.ANN_UNCOMPRESSED_SIZE].isdigit()
        a, b = tmp / f"old{i}", tmp / f"new{i}"
        await apply(await reg.fetch_blob(src, old), a)
        assert await apply(await reg.fetch_blob(dst, new), b) == new_diff_ids[i]
        original = tree(a, ignore)
        assert original  # not vacuous
        assert tree_diff(original, tree(b, ignore)) == []


# --- pure planning ----------------------------------------------------------------------------

def test_parse_prioritize_normalises_and_skips_comments() -> None:
    text = "# recorded profile\n/bin/sh\n\n  usr/lib/x.so \n/bin/sh\n./etc//passwd\n"
    assert parse_profile(text) == ["bin/sh", "usr/lib/x.so", "etc/passwd"]


def test_parse_prioritize_rejects_escapes() -> None:
    with pytest.raises(InvalidArgument, match=r"\.\."):
        parse_profile("../etc/shadow\n")


def test_prioritized_files_go_to_the_topmost_layer_holding_them() -> None:
    layers = [{"bin": "", "bin/sh": "", "etc/passwd": ""},
              {"etc": "", "etc/passwd": "", "app/x": ""}]
    per_layer, missed = assign_prioritized(layers, ["/etc/passwd", "bin/sh", "app/x", "/nope"])
    assert per_layer == [["bin/sh"], ["etc/passwd", "app/x"]]
    assert missed == ["/nope"]


def test_prioritized_paths_follow_symlinks_through_the_merged_view() -> None:
    base = {"bin": "usr/bin", "lib": "/usr/lib", "usr": "", "usr/bin": "", "usr/lib": "",
            "usr/bin/python3": "python3.11", "usr/bin/python3.11": "",
            "usr/lib/libc.so": "", "usr/bin/up": "../../../usr/lib/libc.so", "loop": "loop"}
    top = {"usr/lib/libc.so": ""}
    per_layer, missed = assign_prioritized(
        [base, top], ["/bin/python3", "lib/libc.so", "bin/up", "/loop", "/bin/nope"])
    # A symlink named last is kept with its target; directory symlinks are only walked;
    # ``..`` stops at the root.
    assert per_layer == [["usr/bin/python3", "usr/bin/python3.11", "usr/bin/up"],
                         ["usr/lib/libc.so"]]
    assert missed == ["/loop", "/bin/nope"]


# --- against a real registry ------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("compression", ["gzip", "zstd"])
async def test_convert_two_layer_image(registry: RegistryServer, repo_name: str,
                                       image_factory: ImageFactory, busybox_tree: Path,
                                       tmp_path: Path, fmt: Format,
                                       compression: CompressionName) -> None:
    need_root("chown, mknod and trusted xattrs in the extracted layers")
    pushed = await image_factory.push(registry, repo_name, [busybox_tree, RICH],
                                      compression=compression, oci=compression == "gzip")
    dst = ref_of(registry, repo_name, "lazy")
    async with open_registry() as reg:
        digest = await convert_image(reg, pushed.ref, dst, format=fmt, chunk_size=CHUNK)
        resolved = await reg.resolve(dst)
        assert resolved.descriptor.digest == digest
        await check_converted(reg, pushed.ref, dst, fmt, tmp_path)
        manifest, _ = await fetch_image(reg, dst)
        top = await lazy(reg, dst, manifest.layers[1])
        assert top is not None
        # Big files were cut into chunks; eStargz says "no startup files", zstd:chunked
        # writes no landmark at all.
        assert len(top.files["app/big.bin"]) > 1
        assert prefetch_set(top) == ([] if fmt == "estargz" else None)


@pytest.mark.parametrize("fmt", FORMATS)
async def test_prioritized_files_come_first_then_the_landmark(
        registry: RegistryServer, repo_name: str, image_factory: ImageFactory,
        busybox_tree: Path, tmp_path: Path, fmt: Format) -> None:
    need_root("chown, mknod and trusted xattrs in the extracted layers")
    pushed = await image_factory.push(registry, repo_name, [busybox_tree, RICH])
    dst = ref_of(registry, repo_name, "prio")
    paths = parse_profile("/bin/sh\netc/passwd\n/app/hard\n/not/there\n")
    async with open_registry() as reg:
        await convert_image(reg, pushed.ref, dst, format=fmt, prioritize=paths,
                            chunk_size=CHUNK)
        await check_converted(reg, pushed.ref, dst, fmt, tmp_path)
        manifest, _ = await fetch_image(reg, dst)
        layers = [await lazy(reg, dst, d) for d in manifest.layers]
    heads = []
    for layer in layers:
        assert layer is not None
        names = [e.name for e in layer.toc.entries if e.type != "chunk"]
        heads.append(names[:names.index(".prefetch.landmark") + 1])
    # etc/passwd is in both layers: the top one is what the container reads.
    # bin/sh is a symlink to busybox: both go first.
    assert heads == [["bin", "bin/sh", "bin/busybox", ".prefetch.landmark"],
                     ["etc", "etc/passwd", "app", "app/setuid", "app/hard",
                      ".prefetch.landmark"]]
    assert [prefetch_set(x) for x in layers if x] == [["bin/busybox"],
                                                      ["etc/passwd", "app/setuid"]]


@pytest.mark.parametrize("fmt", FORMATS)
async def test_layers_already_in_the_format_are_copied(
        registry: RegistryServer, repo_name: str, image_factory: ImageFactory,
        busybox_tree: Path, fmt: Format) -> None:
    pushed = await image_factory.push(registry, repo_name, [busybox_tree])
    first, second = ref_of(registry, repo_name, "once"), ref_of(registry, repo_name + "-b")
    async with open_registry() as reg:
        once = await convert_image(reg, pushed.ref, first, format=fmt)
        twice = await convert_image(reg, first, second, format=fmt)
        # Same blob, same annotations, same config: the very same manifest.
        assert twice == once
        manifest, _ = await fetch_image(reg, second)
        assert await lazy(reg, second, manifest.layers[0]) is not None


async def test_estargz_to_zstd_chunked_drops_the_old_format_entries(
        registry: RegistryServer, repo_name: str, image_factory: ImageFactory,
        busybox_tree: Path, tmp_path: Path) -> None:
    need_root("chown in the extracted layers")
    pushed = await image_factory.push(registry, repo_name, [busybox_tree])
    mid, dst = ref_of(registry, repo_name, "estargz"), ref_of(registry, repo_name, "zstd")
    async with open_registry() as reg:
        await convert_image(reg, pushed.ref, mid, format="estargz", prioritize=["bin/busybox"])
        await convert_image(reg, mid, dst, format="zstd:chunked")
        await check_converted(reg, mid, dst, "zstd:chunked", tmp_path)
        manifest, _ = await fetch_image(reg, dst)
        layer = await lazy(reg, dst, manifest.layers[0])
    assert layer is not None
    names = {e.name for e in layer.toc.entries}
    assert not names & FORMAT_FILES


async def test_multi_platform_index_with_all_platforms(
        registry: RegistryServer, repo_name: str, image_factory: ImageFactory) -> None:
    here = host_platform()
    other = Platform("linux", "s390x") if here.architecture != "s390x" else Platform(
        "linux", "amd64")
    images = [image_factory.build([[Entry("which", data=str(p).encode())]], platform=p)
              for p in (other, here)]
    src = ref_of(registry, repo_name, "multi")
    async with open_registry() as reg:
        await push_index(reg, src, images)
        all_dst, one_dst = ref_of(registry, repo_name, "all"), ref_of(registry, repo_name, "one")
        digest = await convert_image(reg, src, all_dst, format="estargz", all_platforms=True)
        desc, data = await reg.fetch_manifest(all_dst, "all")
        assert desc.digest == digest and desc.media_type == mt.OCI_INDEX
        index = parse_index(data)
        assert [m.platform for m in index.manifests] == [other, here]
        for m in index.manifests:
            _, body = await reg.fetch_manifest(all_dst, str(m.digest))
            layer = parse_manifest(body).layers[0]
            assert await lazy(reg, all_dst, layer) is not None
        # Without all_platforms: only this host's image, as a plain manifest.
        one = await convert_image(reg, src, one_dst, format="zstd:chunked")
        resolved = await reg.resolve(one_dst)
        assert resolved.index is None and resolved.descriptor.digest == one
        manifest = parse_manifest(resolved.manifest_bytes)
        config = parse_config(await reg.fetch_blob(one_dst, manifest.config))
        assert config.platform == here


async def test_missing_source_is_not_found_naming_it(registry: RegistryServer,
                                                     repo_name: str) -> None:
    src = ref_of(registry, repo_name, "absent")
    async with open_registry() as reg:
        with pytest.raises(NotFound, match=repo_name):
            await convert_image(reg, src, ref_of(registry, repo_name, "dst"))


async def test_bad_arguments_are_invalid(registry: RegistryServer, repo_name: str) -> None:
    src = ref_of(registry, repo_name)
    async with open_registry() as reg:
        with pytest.raises(InvalidArgument, match="format"):
            await convert_image(reg, src, src, format="squashfs")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="tag, not a digest"):
            await convert_image(reg, src, src.with_object("sha256:" + "0" * 64))
        with pytest.raises(InvalidArgument, match="chunk size"):
            await convert_image(reg, src, src, chunk_size=0)
