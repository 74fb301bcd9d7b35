"""kubelet's credentials through snapfs's CRI image-service proxy, against containerd 1.6.

kubelet (this test) sends its image calls to snapfs's ``[cri]`` socket and its runtime calls
to containerd; snapfs has no docker config.json. A private eStargz image (htpasswd, or a token
server demanding the same user) is pulled with the credentials only in PullImage's
AuthConfig: containerd pulls with them, and snapfs's lazy fetcher, which containerd never
hands them to, reads the layer with the copy the proxy kept. The layer must be mounted lazily
(committed by snapfs under its chain ID, a fraction of the blob through the counting proxy),
the container's output must be right, and the password must be in no file under snapfs's
root or state and not in its (debug) log. Without credentials the pull fails with
containerd's own error, passed through. ListImages, ImageStatus, ImageFsInfo and RemoveImage
answer what containerd answers. After a daemon restart the kept credentials are gone: a
still-lazy file is refused until kubelet's next PullImage brings them back.
"""

from __future__ import annotations

import base64
import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio

from content.credentials import Credentials, StaticCredentials
from content.image import Layer
from content.push import push_image
from content.reference import parse_reference
from content.registry import open_registry
from snapfs.app.pull import chain_ids
from snapfs.snapshot.labels import LABEL_SNAPSHOT_REF
from snapfs.snapshot.types import Kind
from tests.cri.test_cri import MARKER, UNREAD, app_layer, by_chain, run_to_exit
from tests.fixtures.cri import CriNode, read_cri_log
from tests.fixtures.daemon import SnapfsDaemon
from tests.fixtures.images import ImageFactory
from tests.fixtures.registry import FaultProxy, RegistryServer, TokenServer
from tests.snapfs.fuse_memlayer import need_fuse
from tests.snapfs.test_containerd import snapfs_list, wait_for_snapfs

REDIAL_LIMIT = 60.0
USER = "alice"
PASSWORD = f"cri-only-{uuid.uuid4().hex}"  # unique: found only if something leaked it


@pytest.fixture(params=["htpasswd", "token"])
def private_registry(request: pytest.FixtureRequest, tmp_path: Path,
                     registry_factory: Callable[..., RegistryServer]
                     ) -> Iterator[tuple[RegistryServer, TokenServer | None]]:
    if request.param == "htpasswd":
        yield registry_factory(htpasswd={USER: PASSWORD}), None
        return
    tokens = TokenServer(tmp_path / "tokens", users={USER: PASSWORD})
    try:
        yield registry_factory(token=tokens), tokens
    finally:
        tokens.close()


async def push_private(server: RegistryServer, repo: str, image_factory: ImageFactory,
                       busybox_tree: Path) -> Layer:
    layer = app_layer(busybox_tree, "estargz")
    pusher = StaticCredentials({server.host: Credentials(USER, PASSWORD)})
    async with open_registry(credentials=pusher) as reg:
        await push_image(reg, parse_reference(f"{server.host}/{repo}:latest"),
                         image_factory.build([layer]))
    return layer


def files_holding(secrets: list[bytes], *roots: Path) -> list[str]:
    """Every regular file under ``roots`` (not crossing into mounts, e.g. the FUSE tree)
    whose bytes contain one of ``secrets``."""
    found = []
    for root in roots:
        for top, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if not os.path.ismount(os.path.join(top, d))]
            for name in files:
                path = os.path.join(top, name)
                if not os.path.isfile(path) or os.path.islink(path):
                    continue
                with open(path, "rb") as f:
                    data = f.read()
                found += [path for s in secrets if s in data]
    return found


async def test_private_image_pulled_lazily_with_pullimage_credentials_only(
    snapfs_daemon: SnapfsDaemon, cri_proxy_node: CriNode,
    private_registry: tuple[RegistryServer, TokenServer | None],
    fault_proxy: Callable[..., FaultProxy], repo_name: str, image_factory: ImageFactory,
    busybox_tree: Path,
) -> None:
    need_fuse()
    node = cri_proxy_node
    assert node.direct is not None
    server, tokens = private_registry
    proxy = fault_proxy(server.url, forward_authorization=True)
    node.trust_plain_http(proxy.host)
    layer = await push_private(server, repo_name, image_factory, busybox_tree)
    ref = f"{proxy.host}/{repo_name}:latest"

    pushed_at = len(tokens.requests) if tokens is not None else 0
    # No credentials: containerd refuses, and kubelet sees exactly what containerd said.
    with pytest.raises(grpc.RpcError) as proxied:
        await node.cri.pull_image(ref)
    with pytest.raises(grpc.RpcError) as direct:
        await node.direct.pull_image(ref)
    said: Any = proxied.value
    assert (said.code(), said.details()) == (direct.value.code(),  # type: ignore[attr-defined]
                                             direct.value.details())  # type: ignore[attr-defined]
    assert "401 Unauthorized" in said.details(), said.details()
    refused_at = len(tokens.requests) if tokens is not None else 0

    image_id = await node.cri.pull_image(ref, username=USER, password=PASSWORD)
    assert image_id.startswith("sha256:")
    (chain,) = (str(c) for c in chain_ids([layer.diff_id]))
    (snap,) = by_chain(await snapfs_list(snapfs_daemon.address), chain)
    # Lazy: snapfs itself committed the layer (it read footer and TOC with kubelet's
    # credentials); a refused read would have left it to containerd's full unpack.
    assert (snap.name, snap.kind, snap.labels[LABEL_SNAPSHOT_REF]) == (chain, Kind.COMMITTED,
                                                                      chain)

    # The image service answers through the proxy what containerd answers.
    status = await node.cri.image_status(ref)
    assert status is not None and ref in status.repo_tags and status.id == image_id
    assert status == await node.direct.image_status(ref)
    listed = sorted((i.id, tuple(i.repo_tags)) for i in await node.cri.list_images())
    assert (image_id, (ref,)) in listed
    assert listed == sorted((i.id, tuple(i.repo_tags)) for i in await node.direct.list_images())
    fs_proxied, fs_direct = await node.cri.image_fs_info(), await node.direct.image_fs_info()
    assert [f.fs_id.mountpoint for f in fs_proxied.image_filesystems] == \
        [f.fs_id.mountpoint for f in fs_direct.image_filesystems] != []

    status, log = await run_to_exit(node, ref, "pod-private")
    assert (status.exit_code, status.reason) == (0, "Completed")
    assert read_cri_log(log) == [("stdout", "F", MARKER.decode().strip()),
                                 ("stdout", "F", "done")]
    sent = proxy.sent.get(f"/v2/{repo_name}/blobs/{layer.digest}", 0)
    # containerd never fetched the layer; snapfs fetched what was read, not the 4 MiB.
    assert 0 < sent < len(layer.blob) - UNREAD // 2, (sent, len(layer.blob))
    if tokens is not None:
        # The refused pulls asked anonymously; after them (containerd's OAuth2 POST aside,
        # refused with 405) every token request, containerd's and snapfs's, was kubelet's user.
        gets = [r["user"] for r in tokens.requests[refused_at:] if "method" not in r]
        assert set(gets) == {USER} and len(gets) >= 2, gets
        assert [r["user"] for r in tokens.requests[pushed_at:refused_at]] == ["", ""]

    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode())
    secrets = [PASSWORD.encode(), basic]
    assert files_holding(secrets, snapfs_daemon.root, snapfs_daemon.state,
                         snapfs_daemon.log, snapfs_daemon.log.with_suffix(".toml")) == []
    assert "kept in memory" in snapfs_daemon.log.read_text()

    await node.cri.remove_image(ref)
    assert await node.direct.image_status(ref) is None
    pause = node.pause_chain
    await wait_for_snapfs(snapfs_daemon.address,
                          lambda infos: len(infos) == 1 and bool(by_chain(infos, pause)))


async def run_reading(node: CriNode, ref: str, name: str, command: str) -> list[str]:
    """A one-shot pod running ``command``; its output lines, stdout and stderr alike."""
    pod = await node.run_pod(name)
    container_id = await node.create_container(pod, "app", ref, ["/bin/sh", "-c", command])
    await node.cri.start_container(container_id)
    await node.wait_exited(container_id)
    lines = [line for _, _, line in read_cri_log(pod.log_dir / "app.log")]
    await node.remove_container(container_id)
    await node.remove_pod(pod.id)
    return lines


async def run_after_restart(node: CriNode, ref: str, command: str) -> list[str]:
    """``run_reading`` once containerd has redialled snapfs (a backoff of up to ~3 s, during
    which its calls fail with "unavailable"; any other failure is real)."""
    with trio.fail_after(REDIAL_LIMIT):
        for attempt in itertools.count():
            try:
                return await run_reading(node, ref, f"pod-restarted-{attempt}", command)
            except grpc.RpcError as exc:
                if "unavailable" not in (exc.details() or ""):  # type: ignore[attr-defined]
                    raise
            await trio.sleep(0.2)
    raise AssertionError("unreachable")


@pytest.mark.parametrize("private_registry", ["htpasswd"], indirect=True)
async def test_after_a_restart_lazy_reads_wait_for_the_next_pull(
    snapfs_daemon: SnapfsDaemon, cri_proxy_node: CriNode,
    private_registry: tuple[RegistryServer, TokenServer | None],
    fault_proxy: Callable[..., FaultProxy], repo_name: str, image_factory: ImageFactory,
    busybox_tree: Path,
) -> None:
    """What README says: kept credentials die with the daemon; a still-lazy layer then has
    only config.json's (none here) until kubelet pulls the image again."""
    need_fuse()
    node = cri_proxy_node
    server, _ = private_registry
    proxy = fault_proxy(server.url, forward_authorization=True)
    node.trust_plain_http(proxy.host)
    await push_private(server, repo_name, image_factory, busybox_tree)
    ref = f"{proxy.host}/{repo_name}:latest"
    await node.cri.pull_image(ref, username=USER, password=PASSWORD)
    assert await run_reading(node, ref, "pod-before", "cat /data/marker") == [
        MARKER.decode().strip()]

    await snapfs_daemon.restart(kill=False)
    count = "wc -c < /data/unread.bin || echo refused"
    # Never read before: its chunks must come from the registry, which refuses anonymity.
    # (stdout and stderr reach the CRI log in either order.)
    refused = await run_after_restart(node, ref, count)
    assert "refused" in refused and any("Permission denied" in line for line in refused), \
        refused
    await node.cri.pull_image(ref, username=USER, password=PASSWORD)  # kubelet's next pull
    assert await run_reading(node, ref, "pod-pulled", count) == [str(UNREAD)]
