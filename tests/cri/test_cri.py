"""The Kubernetes node path end to end: kubelet's CRI calls → containerd 1.6 → snapfs.

Each test is what kubelet does for a one-container, host-network pod: PullImage,
RunPodSandbox, CreateContainer, StartContainer, ContainerStatus until exited, then reads the
CRI log file the container wrote through containerd. The image comes from the real registry
through a recording proxy, so the bytes snapfs fetched of the layer are counted; the layer
carries 4 MiB of random data that no one reads. After RemoveContainer, RemovePodSandbox and
RemoveImage, containerd's GC must remove the image's snapshots from snapfs (polled on
snapfs's own socket: containerd's view says nothing about the backend).

eStargz and zstd:chunked layers must be mounted lazily (committed by snapfs under the chain
ID, with the CRI labels, a fraction of the blob fetched); a plain gzip layer takes the native
path (containerd downloads and unpacks it) and runs the same.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from content.compression import media_type_for
from content.estargz import build_estargz
from content.image import Layer, make_layer
from content.mediatypes import OCI_LAYER_ZSTD
from content.tarlayer import Entry, build_tar, entries_from_dir
from content.zstdchunked import build_zstd_chunked
from snapfs.app.pull import chain_ids
from snapfs.snapshot.labels import LABEL_SNAPSHOT_REF
from snapfs.snapshot.types import Info, Kind
from tests.fixtures.cri import CriNode, read_cri_log
from tests.fixtures.daemon import SnapfsDaemon
from tests.fixtures.images import ImageFactory
from tests.fixtures.registry import FaultProxy, RegistryServer
from tests.snapfs.fuse_memlayer import need_fuse
from tests.snapfs.test_containerd import snapfs_list, wait_for_snapfs

UNREAD = 4 * 1024 * 1024  # random, so incompressible: a lazy pull must not fetch it
MARKER = b"served from the image layer\n"
PROBE_LIMIT = 256 * 1024  # what deciding that a layer is not lazy may read of it
LABEL_LAYER_DIGEST = "containerd.io/snapshot/cri.layer-digest"
LABEL_IMAGE_REF = "containerd.io/snapshot/cri.image-ref"


def app_entries(busybox: Path) -> list[Entry]:
    return [*entries_from_dir(busybox), Entry("data", "dir"),
            Entry("data/marker", data=MARKER),
            Entry("data/unread.bin", data=random.Random("cri").randbytes(UNREAD))]


def app_layer(busybox: Path, fmt: str) -> Layer:
    tar = build_tar(app_entries(busybox))
    if fmt == "gzip":
        return make_layer(tar, "gzip")
    if fmt == "estargz":
        built, media_type = build_estargz(io.BytesIO(tar)), media_type_for("gzip")
    else:
        built, media_type = build_zstd_chunked(io.BytesIO(tar)), OCI_LAYER_ZSTD
    assert built.blob is not None
    return Layer(built.blob, media_type, built.diff_id, dict(built.annotations))


def by_chain(infos: list[Info], chain: str) -> list[Info]:
    """snapfs's snapshots for a chain ID: the remote one is named by it, unpacked ones end
    with it (containerd's ``<ns>/<n>/<chainID>``)."""
    return [i for i in infos if i.name == chain or i.name.endswith("/" + chain)]


async def run_to_exit(node: CriNode, ref: str, name: str) -> tuple[Any, Path]:
    """kubelet's sequence for a one-shot pod; returns the exited status and its log file."""
    pod = await node.run_pod(name)
    container_id = await node.create_container(
        pod, "app", ref, ["/bin/sh", "-c", "cat /data/marker; echo done"])
    await node.cri.start_container(container_id)
    status = await node.wait_exited(container_id)
    log = pod.log_dir / "app.log"
    assert status.log_path == str(log)
    await node.remove_container(container_id)
    await node.remove_pod(pod.id)
    return status, log


async def pull_run_remove(
    node: CriNode, snapfs_daemon: SnapfsDaemon, proxy: FaultProxy, ref: str, layer: Layer,
    check_snapshot: Callable[[Info], None],
) -> int:
    """The whole CRI flow; returns the layer bytes sent through the proxy before removal."""
    image_ref = await node.cri.pull_image(ref)
    assert image_ref.startswith("sha256:")
    status = await node.cri.image_status(ref)
    assert status is not None and ref in status.repo_tags

    (chain,) = (str(c) for c in chain_ids([layer.diff_id]))
    infos = await snapfs_list(snapfs_daemon.address)
    (snap,) = by_chain(infos, chain)
    assert snap.kind == Kind.COMMITTED
    check_snapshot(snap)

    status, log = await run_to_exit(node, ref, "pod-app")
    assert (status.exit_code, status.reason) == (0, "Completed")
    assert read_cri_log(log) == [("stdout", "F", MARKER.decode().strip()),
                                 ("stdout", "F", "done")]
    layer_path = f"/v2/{ref.split('/', 1)[1].rsplit(':', 1)[0]}/blobs/{layer.digest}"
    sent = proxy.sent.get(layer_path, 0)

    pause = node.pause_chain
    assert len(by_chain(await snapfs_list(snapfs_daemon.address), pause)) == 1
    await node.cri.remove_image(ref)
    assert await node.cri.image_status(ref) is None
    # containerd's GC removes the image's snapshots (and the container's and the pod's) from
    # snapfs; the pause image, still an image, keeps exactly its own. One GC pass removes
    # children before parents but may take separate trees in any order: wait for the end.
    left = await wait_for_snapfs(
        snapfs_daemon.address, lambda infos: len(infos) == 1 and bool(by_chain(infos, pause)))
    assert [i.kind for i in left] == [Kind.COMMITTED]
    return sent


@pytest.fixture
def proxy(fault_proxy: Callable[..., FaultProxy], registry: RegistryServer,
          cri_node: CriNode) -> FaultProxy:
    """A recording proxy in front of the registry that containerd (and snapfs) pull through."""
    p = fault_proxy(registry.url)
    cri_node.trust_plain_http(p.host)
    return p


@pytest.mark.parametrize("fmt", ["estargz", "zstd:chunked"])
async def test_cri_pulls_lazily_runs_and_gc_empties_snapfs(
    fmt: str, snapfs_daemon: SnapfsDaemon, cri_node: CriNode, proxy: FaultProxy,
    registry: RegistryServer, repo_name: str, image_factory: ImageFactory, busybox_tree: Path,
) -> None:
    need_fuse()
    layer = app_layer(busybox_tree, fmt)
    await image_factory.push(registry, repo_name, [layer])
    ref = f"{proxy.host}/{repo_name}:latest"

    def lazy(snap: Info) -> None:
        (chain,) = (str(c) for c in chain_ids([layer.diff_id]))
        # The remote-snapshot handshake: snapfs committed it under the chain ID itself.
        assert snap.name == chain
        assert snap.labels[LABEL_SNAPSHOT_REF] == chain
        assert snap.labels[LABEL_LAYER_DIGEST] == str(layer.digest)
        assert snap.labels[LABEL_IMAGE_REF] == ref

    sent = await pull_run_remove(cri_node, snapfs_daemon, proxy, ref, layer, lazy)
    # Only what the container read (sh, cat, the marker) and the index crossed the wire.
    assert 0 < sent < len(layer.blob) - UNREAD // 2, (sent, len(layer.blob))


async def test_cri_gzip_image_takes_the_native_path_and_runs(
    snapfs_daemon: SnapfsDaemon, cri_node: CriNode, proxy: FaultProxy, registry: RegistryServer,
    repo_name: str, image_factory: ImageFactory, busybox_tree: Path,
) -> None:
    version = await cri_node.cri.version()
    assert (version.runtime_name, version.runtime_api_version) == ("containerd", "v1")
    layer = app_layer(busybox_tree, "gzip")
    await image_factory.push(registry, repo_name, [layer])
    ref = f"{proxy.host}/{repo_name}:latest"

    def unpacked(snap: Info) -> None:
        (chain,) = (str(c) for c in chain_ids([layer.diff_id]))
        # snapfs declined the remote handshake (it still saw the CRI labels, which containerd
        # keeps on the commit): containerd unpacked the layer into a snapshot of its own
        # naming, <ns>/<n>/<chainID>.
        assert snap.name != chain and snap.name.startswith("k8s.io/")

    sent = await pull_run_remove(cri_node, snapfs_daemon, proxy, ref, layer, unpacked)
    gets = [h for method, path, h in proxy.log
            if method == "GET" and path.endswith(f"/blobs/{layer.digest}")]
    ranged = [h for h in gets if any(k.lower() == "range" for k in h)]
    # containerd downloaded the whole layer once; snapfs only probed it (footer, TOC) for a
    # lazy format before it declined.
    assert (len(gets) - len(ranged), len(ranged) > 0) == (1, True)
    assert len(layer.blob) < sent <= len(layer.blob) + PROBE_LIMIT, (sent, len(layer.blob))
