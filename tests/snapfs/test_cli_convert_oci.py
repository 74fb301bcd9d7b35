"""``snapfs convert`` from an OCI image layout (``oci:DIR[:TAG]``) made by skopeo and by
umoci in the test, to the test registry; the result pulls lazily; progress is plain lines in
a pipe. Real skopeo, umoci, registry, FUSE and overlayfs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import trio

from content import mediatypes as mt
from content.reference import parse_reference
from content.tarlayer import Entry
from tests.fixtures.images import ImageFactory
from tests.fixtures.realenv import need_binary
from tests.fixtures.registry import RegistryServer
from tests.snapfs import test_cli_run
from tests.snapfs.test_cli_convert import lazy_prefetch, resolve_digest
from tests.snapfs.test_cli_run import SNAPFS, WAIT, SnapfsCli

short_dir = test_cli_run.short_dir
embedded_cli = test_cli_run.embedded_cli

MOTD = [Entry("etc", "dir"), Entry("etc/motd", data=b"hello from a layout\n")]


async def _snapfs(*args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(WAIT):
        return await trio.run_process([str(SNAPFS), *args], check=False,
                                      stdin=subprocess.DEVNULL, capture_stdout=True,
                                      capture_stderr=True)


async def test_convert_from_a_skopeo_layout_then_pull_lazily(
        registry: RegistryServer, repo_name: str, image_factory: ImageFactory, tmp_path: Path,
        embedded_cli: SnapfsCli, busybox_tree: Path) -> None:
    skopeo = need_binary("skopeo")
    pushed = await image_factory.push(registry, repo_name, [busybox_tree, MOTD])
    layout = tmp_path / "layout"
    await trio.run_process([skopeo, "copy", "--quiet", "--src-tls-verify=false",
                            f"docker://{pushed.ref}", f"oci:{layout}:v1"])
    dst = f"{registry.host}/{repo_name}:lazy"
    res = await _snapfs("convert", f"oci:{layout}:v1", dst)
    assert res.returncode == 0, res.stderr
    digest = res.stdout.decode().strip()
    assert await trio.to_thread.run_sync(resolve_digest, parse_reference(dst)) == digest
    # In a pipe: a header, each layer's steps, a summary; one line each.
    lines = res.stderr.decode().splitlines()
    assert lines[0].startswith("converting ") and "(2 layers," in lines[0]
    steps = [ln.split()[1] for ln in lines[1:-1]]
    assert sorted(steps) == ["converted", "converted", "downloaded", "downloaded"]
    assert lines[-1].startswith("converted ") and ": 2/2 layers" in lines[-1]
    assert all("\r" not in ln and "\x1b" not in ln for ln in lines)

    pulled = json.loads(await embedded_cli.ok("pull", "--json", dst))
    assert (pulled["layers"], pulled["lazy"], pulled["native"]) == (2, 2, 0)
    assert await embedded_cli.ok("run", "--rm", "-q", dst, "cat", "/etc/motd") == \
        "hello from a layout\n"


async def test_convert_from_an_umoci_layout(registry: RegistryServer, repo_name: str,
                                           tmp_path: Path) -> None:
    umoci = need_binary("umoci")
    layout, bundle = tmp_path / "layout", tmp_path / "bundle"
    await trio.run_process([umoci, "init", "--layout", str(layout)])
    await trio.run_process([umoci, "new", "--image", f"{layout}:t"])
    # unpack + repack (umoci 0.4.7's `insert` writes a tar without its end blocks).
    await trio.run_process([umoci, "unpack", "--rootless", "--image", f"{layout}:t",
                            str(bundle)], capture_stderr=True)
    (bundle / "rootfs" / "etc").mkdir(parents=True)
    (bundle / "rootfs" / "etc" / "motd").write_text("from umoci\n")
    await trio.run_process([umoci, "repack", "--image", f"{layout}:t", str(bundle)])
    dst = f"{registry.host}/{repo_name}:zstd"
    res = await _snapfs("convert", "-q", "--format", "zstd:chunked", f"oci:{layout}:t", dst)
    assert (res.returncode, res.stderr) == (0, b"")
    assert await trio.to_thread.run_sync(resolve_digest, parse_reference(dst)) == \
        res.stdout.decode().strip()
    media_type, _ = await trio.to_thread.run_sync(lazy_prefetch, parse_reference(dst))
    assert media_type == mt.OCI_LAYER_ZSTD
    # A tag the layout does not have: one line naming the tags it has, exit 125.
    res = await _snapfs("convert", f"oci:{layout}:nope", dst)
    err = res.stderr.decode().splitlines()
    assert res.returncode == 125 and len(err) == 1 and "tags: t" in err[0], err
