"""The CRI image-service proxy on its own: bytes, metadata and errors pass through unchanged,
and PullImage's credentials land in the keychain (and nowhere else).

The upstream here is a small grpc server of the test's own standing in for containerd's CRI
socket: containerd does not reveal the metadata it received or let a test choose its error,
trailers and answer bytes. The real path (kubelet's calls through the proxy to containerd 1.6)
is tested in ``tests/cri/test_cri_credentials.py``.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio

from content.credentials import IDENTITY_TOKEN_USER, Credentials
from content.keychain import Keychain
from snapfs.api.cri import encode_pull_image
from snapfs.daemon.cri_proxy import serve_cri_proxy

SECRET = "pr0xy-s3cret-never-logged"
IMAGE_STATUS = "/runtime.v1.ImageService/ImageStatus"
REMOVE_IMAGE = "/runtime.v1.ImageService/RemoveImage"
PULL_IMAGE = "/runtime.v1.ImageService/PullImage"


@dataclass
class Upstream:
    """Records each call; answers ``reply`` bytes, or fails RemoveImage."""

    calls: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)
    reply: bytes = b"\x0a\x03abc"

    def handle(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.calls.append((method, request, dict(context.invocation_metadata())))
        context.set_trailing_metadata((("upstream-said", "hello"),))
        if method == REMOVE_IMAGE:
            context.abort(grpc.StatusCode.NOT_FOUND, "image \"x\": not found")
        return self.reply

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(partial(self.handle, details.method))


@pytest.fixture
def upstream(sock_dir: Path) -> Iterator[tuple[Upstream, Path]]:
    up = Upstream()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((up,))
    path = sock_dir / "containerd.sock"
    server.add_insecure_port(f"unix:{path}")
    server.start()
    try:
        yield up, path
    finally:
        server.stop(None).wait()


@pytest.fixture
async def proxy(upstream: tuple[Upstream, Path], sock_dir: Path
                ) -> AsyncIterator[tuple[grpc.Channel, Keychain]]:
    keychain = Keychain()
    async with trio.open_nursery() as nursery:
        sock = await nursery.start(partial(serve_cri_proxy, sock_dir / "cri.sock",
                                           f"unix://{upstream[1]}", keychain))
        channel = grpc.insecure_channel(f"unix:{sock}")
        try:
            yield channel, keychain
        finally:
            channel.close()
            nursery.cancel_scope.cancel()


async def call(channel: grpc.Channel, method: str, request: bytes,
               metadata: tuple[tuple[str, str], ...] = ()) -> tuple[bytes, Any]:
    stub = channel.unary_unary(method)
    return await trio.to_thread.run_sync(
        partial(stub.with_call, request, metadata=metadata, timeout=30))  # type: ignore[no-any-return]


async def test_calls_pass_through_unchanged_with_their_metadata(
        proxy: tuple[grpc.Channel, Keychain], upstream: tuple[Upstream, Path]) -> None:
    channel, _ = proxy
    up, _ = upstream
    request = b"\x0a\x05\x0a\x03img\x10\x01"  # ImageStatusRequest{image{image:"img"}, verbose}
    answer, info = await call(channel, IMAGE_STATUS, request, (("x-kubelet-trace", "t-1"),))
    assert answer == up.reply
    assert ("upstream-said", "hello") in info.trailing_metadata()
    ((method, got, metadata),) = up.calls
    assert (method, got, metadata["x-kubelet-trace"]) == (IMAGE_STATUS, request, "t-1")


async def test_errors_are_containerds_own(proxy: tuple[grpc.Channel, Keychain]) -> None:
    channel, _ = proxy
    with pytest.raises(grpc.RpcError) as info:
        await call(channel, REMOVE_IMAGE, b"\x0a\x03\x0a\x01x")
    failed: Any = info.value
    assert (failed.code(), failed.details()) == (grpc.StatusCode.NOT_FOUND,
                                                 "image \"x\": not found")
    assert ("upstream-said", "hello") in failed.trailing_metadata()
    with pytest.raises(grpc.RpcError) as info:  # not an image call: not ours to answer
        await call(channel, "/runtime.v1.RuntimeService/Version", b"")
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]


async def test_pull_credentials_are_kept_per_repository_and_refreshed(
        proxy: tuple[grpc.Channel, Keychain], upstream: tuple[Upstream, Path],
        caplog: pytest.LogCaptureFixture) -> None:
    channel, keychain = proxy
    up, _ = upstream
    caplog.set_level(logging.DEBUG)
    image = "reg.test:5000/team/app:1"
    request = encode_pull_image(image, username="alice", password=SECRET)
    await call(channel, PULL_IMAGE, request)
    assert up.calls[-1][1] == request  # forwarded as received, credentials included
    assert keychain.lookup("reg.test:5000", "team/app") == Credentials("alice", SECRET)
    assert keychain.lookup("reg.test:5000", "team/other") is None
    assert keychain.lookup("other.test", "team/app") is None

    # The next pull replaces them: kubelet's secret was rotated to a docker "auth" string.
    auth = base64.b64encode(b"alice:rotated-" + SECRET.encode()).decode()
    await call(channel, PULL_IMAGE, encode_pull_image(image, auth=auth))
    assert keychain.lookup("reg.test:5000", "team/app") == Credentials("alice",
                                                                       "rotated-" + SECRET)
    await call(channel, PULL_IMAGE, encode_pull_image(
        "reg.test:5000/team/app@sha256:" + "a" * 64, identity_token=SECRET))
    assert keychain.lookup("reg.test:5000", "team/app") == Credentials(IDENTITY_TOKEN_USER,
                                                                       SECRET)
    # Credentials naming another server do not apply (containerd's rule), and a pull without
    # any forgets what was kept: config.json applies again.
    await call(channel, PULL_IMAGE, encode_pull_image(
        image, username="bob", password=SECRET, server_address="https://elsewhere.test"))
    assert keychain.lookup("reg.test:5000", "team/app") is None
    await call(channel, PULL_IMAGE, encode_pull_image(image, registry_token=SECRET))
    assert keychain.lookup("reg.test:5000", "team/app") == Credentials(
        "", "", registry_token=SECRET)
    await call(channel, PULL_IMAGE, encode_pull_image(image))
    assert len(keychain) == 0

    assert len(up.calls) == 6
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "team/app" in logged and SECRET not in logged
    assert SECRET not in repr(Credentials("alice", SECRET))
