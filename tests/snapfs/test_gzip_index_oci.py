"""An unmodified image from an OCI layout, lazily (#15 acceptance): umoci builds the layout
(its own Go gzip, never touched by snapfs), skopeo pushes it, ``snapfs index IMAGE --push``
stores the side index beside it, and the image then runs lazily

1. through containerd 1.6 (``ctr-remote image rpull``, then ``ctr run``),
2. through CRI (kubelet's calls to containerd's CRI plugin),
3. through ``snapfs run``;

each time the app layer's bytes counted at a proxy are a fraction of it, and every file
(type, mode, owner, size, link target, sha256) equals the native extraction of the same
layer blobs. Real umoci, skopeo, registry, containerd, FUSE, runc.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from content.unpack import apply_layer
from snapfs.client.quickstatus import status_socket
from snapfs.client.status import query_status
from snapfs.lazy.layers import layer_id
from tests.fixtures.containerd import ContainerdFactory
from tests.fixtures.cri import CriNode, read_cri_log
from tests.fixtures.daemon import SnapfsDaemon
from tests.fixtures.realenv import need_binary, need_root
from tests.fixtures.registry import FaultProxy, RegistryServer
from tests.snapfs.test_cli_run import SNAPFS, WAIT, SnapfsCli, embedded_cli, short_dir
from tests.snapfs.test_containerd import SNAPSHOTTER, ctr, start_containerd_for
from tests.snapfs.test_lazy_pull import tree

MARKER = "from-an-oci-layout\n"
BLOBS = 8  # random (incompressible) files of BLOB_SIZE no one reads
BLOB_SIZE = 400_000


@dataclass(frozen=True)
class OciImage:
    ref: str  # through the proxy
    repo: str
    layers: list[tuple[str, bytes]]  # (digest, blob), base first

    @property
    def app(self) -> tuple[str, bytes]:
        return self.layers[-1]

    def app_bytes_sent(self, proxy: FaultProxy) -> int:
        return proxy.sent.get(f"/v2/{self.repo}/blobs/{self.app[0]}", 0)


def _app_files(rootfs: Path, seed: str) -> None:
    """The app layer's files: modes, owners, links, and data no one reads."""
    rnd = random.Random(seed)
    app = rootfs / "app"
    (app / "bin").mkdir(parents=True)
    (app / "data.txt").write_text(MARKER)
    tool = app / "bin" / "tool"
    tool.write_bytes(b"\x7fELF" + rnd.randbytes(300_000))
    os.chown(tool, 1000, 1000)
    tool.chmod(0o750)
    suid = app / "bin" / "suid"
    suid.write_bytes(b"#!/bin/sh\necho suid\n")
    suid.chmod(0o4755)
    (app / "link").symlink_to("data.txt")
    os.link(app / "data.txt", app / "hard")
    (app / "empty").write_bytes(b"")
    private = app / "private"
    private.mkdir(mode=0o700)
    os.chown(private, 1000, 1000)
    (private / "key").write_bytes(b"k3y\n")
    for i in range(BLOBS):
        (app / f"blob{i}").write_bytes(rnd.randbytes(BLOB_SIZE))


async def _umoci_layer(umoci: str, image: str, bundle: Path,
                       fill: Callable[[Path], None]) -> None:
    await trio.run_process([umoci, "unpack", "--image", image, str(bundle)],
                           capture_stdout=True, capture_stderr=True)
    await trio.to_thread.run_sync(fill, bundle / "rootfs")
    await trio.run_process([umoci, "repack", "--image", image, str(bundle)],
                           capture_stdout=True, capture_stderr=True)


async def push_oci_layout_image(tmp_path: Path, proxy: FaultProxy, repo: str,
                                busybox_tree: Path) -> OciImage:
    """A two-layer image (busybox, app) built by umoci and pushed by skopeo through
    ``proxy``; its layers are umoci's gzip, byte for byte (the manifest digest too)."""
    need_root("umoci unpack/repack with owners")
    umoci, skopeo = need_binary("umoci"), need_binary("skopeo")
    layout = tmp_path / "layout"
    await trio.run_process([umoci, "init", "--layout", str(layout)])
    image = f"{layout}:v1"
    await trio.run_process([umoci, "new", "--image", image])
    await trio.run_process([umoci, "config", "--image", image, "--config.cmd", "/bin/sh",
                            "--config.env", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"])

    def base(rootfs: Path) -> None:
        shutil.copytree(busybox_tree, rootfs, symlinks=True, dirs_exist_ok=True)

    await _umoci_layer(umoci, image, tmp_path / "b1", base)
    await _umoci_layer(umoci, image, tmp_path / "b2", lambda r: _app_files(r, repo))
    await trio.run_process([skopeo, "copy", "--quiet", "--dest-tls-verify=false",
                            f"oci:{image}", f"docker://{proxy.host}/{repo}:v1"])
    index = json.loads((layout / "index.json").read_text())
    (desc,) = [m for m in index["manifests"]
               if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "v1"]
    manifest = json.loads(_blob(layout, desc["digest"]))
    layers = [(d["digest"], _blob(layout, d["digest"])) for d in manifest["layers"]]
    assert len(layers) == 2
    assert all(d["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
               for d in manifest["layers"])
    return OciImage(f"{proxy.host}/{repo}:v1", repo, layers)


def _blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()


async def index_and_push(img: OciImage) -> None:
    """``snapfs index IMAGE --push`` as a user runs it (it needs no root or daemon)."""
    with trio.fail_after(WAIT):
        res = await trio.run_process(
            [str(SNAPFS), "index", "--push", "--json", "--span", "256KiB",
             "--min-layer-size", "0", img.ref], capture_stdout=True, capture_stderr=True,
            check=False)
    assert res.returncode == 0, res.stderr.decode()
    out = json.loads(res.stdout)
    assert sorted(r["layer"] for r in out["layers"]) == sorted(d for d, _ in img.layers)


async def native_trees(img: OciImage, dest: Path) -> list[dict[str, dict[str, Any]]]:
    """Each layer extracted natively (the reference every lazy view must equal)."""
    def run() -> list[dict[str, dict[str, Any]]]:
        out = []
        for i, (_, blob) in enumerate(img.layers):
            apply_layer(io.BytesIO(blob), dest / str(i))
            out.append(tree(dest / str(i)))
        return out

    return await trio.to_thread.run_sync(run)


async def assert_fuse_layers_equal_native(root: Path, img: OciImage, tmp_path: Path) -> None:
    expected = await native_trees(img, tmp_path / "native")
    for (digest, _), want in zip(img.layers, expected, strict=True):
        lazy_dir = root / "fuse" / digest.split(":", 1)[1]
        assert lazy_dir.name == layer_id_of(digest)
        got = await trio.to_thread.run_sync(tree, lazy_dir)
        assert got.keys() == want.keys()
        for path in want:
            assert got[path] == want[path], path


def layer_id_of(digest: str) -> str:
    from content.digest import parse_digest
    return layer_id(parse_digest(digest))


def assert_a_fraction(sent: int, img: OciImage) -> None:
    # The file read, its span (256 KiB) and the index; never the unread blobs.
    assert 0 < sent < len(img.app[1]) // 4, (sent, len(img.app[1]))


# -- 1. containerd: ctr-remote rpull ---------------------------------------------------------


async def test_rpull_of_an_oci_layout_image_runs_lazily_and_equals_native(
        snapfs_daemon: SnapfsDaemon, containerd_factory: ContainerdFactory,
        registry: RegistryServer, repo_name: str, busybox_tree: Path, tmp_path: Path,
        fault_proxy: Callable[..., FaultProxy]) -> None:
    ctr_remote = need_binary("ctr-remote")
    proxy = fault_proxy(registry.url)
    img = await push_oci_layout_image(tmp_path, proxy, repo_name, busybox_tree)
    await index_and_push(img)
    # Background completion off: what is fetched is what the container read.
    snapfs_daemon.config_text = "[fetch]\nbackground = false\n"
    await snapfs_daemon.restart(kill=False)
    containerd = await start_containerd_for(snapfs_daemon.address, containerd_factory)
    proxy.sent.clear()
    await ctr(containerd, "image", "rpull", *SNAPSHOTTER, "--plain-http", img.ref,
              binary=ctr_remote)
    res = await ctr(containerd, "run", "--rm", *SNAPSHOTTER, img.ref, "oci1",
                    "/bin/cat", "/app/data.txt")
    assert res.stdout == MARKER
    assert_a_fraction(img.app_bytes_sent(proxy), img)
    reports = {r.digest: r for r in await query_status(status_socket(snapfs_daemon.state))}
    assert {reports[d].format for d, _ in img.layers} == {"gzip-index"}
    await assert_fuse_layers_equal_native(snapfs_daemon.root, img, tmp_path)


# -- 2. CRI ----------------------------------------------------------------------------------


async def test_cri_runs_an_oci_layout_image_lazily_and_equals_native(
        snapfs_daemon: SnapfsDaemon, cri_node: CriNode, registry: RegistryServer,
        repo_name: str, busybox_tree: Path, tmp_path: Path,
        fault_proxy: Callable[..., FaultProxy]) -> None:
    proxy = fault_proxy(registry.url)
    cri_node.trust_plain_http(proxy.host)
    img = await push_oci_layout_image(tmp_path, proxy, repo_name, busybox_tree)
    await index_and_push(img)
    proxy.sent.clear()
    assert (await cri_node.cri.pull_image(img.ref)).startswith("sha256:")
    pod = await cri_node.run_pod("pod-oci")
    cid = await cri_node.create_container(pod, "app", img.ref, ["/bin/cat", "/app/data.txt"])
    await cri_node.cri.start_container(cid)
    status = await cri_node.wait_exited(cid)
    assert (status.exit_code, status.reason) == (0, "Completed")
    assert read_cri_log(pod.log_dir / "app.log") == [("stdout", "F", MARKER.strip())]
    assert_a_fraction(img.app_bytes_sent(proxy), img)
    reports = {r.digest: r for r in await query_status(status_socket(snapfs_daemon.state))}
    assert {reports[d].format for d, _ in img.layers} == {"gzip-index"}
    await assert_fuse_layers_equal_native(snapfs_daemon.root, img, tmp_path)
    await cri_node.remove_container(cid)
    await cri_node.remove_pod(pod.id)


# -- 3. snapfs run ---------------------------------------------------------------------------

# In the container: every path under /app, sorted, with type, mode, owner, and for regular
# files size and sha256, for symlinks the target (busybox's stat, sha256sum, readlink).
LISTING = r"""cd / && find app | sort | while read -r p; do
  stat -c '%n|%F|%a|%u|%g' "$p"
  if [ -L "$p" ]; then echo "-> $(readlink "$p")"
  elif [ -f "$p" ]; then echo "$(stat -c %s "$p") $(sha256sum "$p" | cut -d' ' -f1)"; fi
done"""

_KINDS = {stat.S_IFDIR: "directory", stat.S_IFREG: "regular file",
          stat.S_IFLNK: "symbolic link"}


def expected_listing(native: dict[str, dict[str, Any]]) -> str:
    """``LISTING``'s output for the native tree (pure)."""
    lines = []
    for path in sorted(p for p in native if p == "app" or p.startswith("app/")):
        rec = native[path]
        kind = _KINDS[stat.S_IFMT(rec["mode"])]
        if kind == "regular file" and rec["size"] == 0:
            kind = "regular empty file"
        lines.append(f"{path}|{kind}|{stat.S_IMODE(rec['mode']):o}|{rec['uid']}|{rec['gid']}")
        if "target" in rec:
            lines.append(f"-> {rec['target']}")
        elif "sha256" in rec:
            lines.append(f"{rec['size']} {rec['sha256']}")
    return "\n".join(lines) + "\n"


async def test_snapfs_run_of_an_oci_layout_image_is_lazy_and_equals_native(
        embedded_cli: SnapfsCli, registry: RegistryServer, repo_name: str,
        busybox_tree: Path, tmp_path: Path, fault_proxy: Callable[..., FaultProxy]) -> None:
    proxy = fault_proxy(registry.url)
    img = await push_oci_layout_image(tmp_path, proxy, repo_name, busybox_tree)
    await index_and_push(img)
    config = tmp_path / "config.toml"
    config.write_text("[fetch]\nbackground = false\n")
    proxy.sent.clear()
    out = await embedded_cli.ok("run", "--rm", "-q", "--config", str(config), img.ref,
                                "/bin/cat", "/app/data.txt")
    assert out == MARKER
    assert_a_fraction(img.app_bytes_sent(proxy), img)
    status = json.loads(await embedded_cli.ok("status", "--json"))
    assert {r["format"] for r in status if r["digest"] in dict(img.layers)} == {"gzip-index"}
    # Everything, as the container sees it, equals the native extraction.
    native = (await native_trees(img, tmp_path / "native"))[-1]
    listing = await embedded_cli.ok("run", "--rm", "-q", "--config", str(config), img.ref,
                                    "/bin/sh", "-c", LISTING)
    assert listing == expected_listing(native)
    got = {ln.split()[1] for ln in listing.splitlines() if len(ln.split()) == 2
           and len(ln.split()[1]) == 64}
    assert hashlib.sha256(MARKER.encode()).hexdigest() in got


__all__ = ["embedded_cli", "short_dir"]  # fixtures, imported to be found by pytest
