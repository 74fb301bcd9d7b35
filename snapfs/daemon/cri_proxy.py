"""The CRI image-service proxy: kubelet → snapfs → containerd, keeping kubelet's credentials.

    kubelet --image-service-endpoint=unix://<state>/cri.sock
        │ runtime.v1.ImageService/*  (PullImage, ListImages, ImageStatus, RemoveImage,
        ▼                             ImageFsInfo, and whatever unary call a newer kubelet adds)
    CriProxy ── the same bytes, metadata and deadline ──▶ containerd's CRI socket ([cri] upstream)
        │ PullImage only, before forwarding:
        ▼
    content.keychain.Keychain: (registry host, repository) → the AuthConfig's credentials

Every call is forwarded unchanged, as serialized bytes; the answer (or the error: code,
details, trailing metadata) comes back unchanged too, so kubelet sees containerd's own. A
PullImage's ``AuthConfig`` is recorded for the image's host and repository first, replacing
the previous record (no credentials: removed), following containerd's rule that credentials
naming another ``server_address`` do not apply. The lazy fetcher asks the keychain before
config.json. The keychain lives in memory only: nothing here writes or logs a secret.

Served the way the snapshots API is (``snapfs.daemon.grpc_server.serve_grpc``: grpcio's
threaded server); a handler blocks its own grpc thread on the upstream call and never the
trio loop. Must not interpret any message but PullImage's image and auth.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import grpc
import trio

from content.credentials import IDENTITY_TOKEN_USER, Credentials, config_host
from content.errors import ContentError
from content.keychain import Keychain
from content.reference import parse_reference
from snapfs.api.cri import IMAGE_SERVICE, PULL_IMAGE, PullAuth, parse_pull_image
from snapfs.daemon.grpc_server import serve_grpc
from snapfs.errors import InvalidArgument

log = logging.getLogger(__name__)

# Set by grpc itself on each hop; forwarding them would duplicate or contradict the new call.
_HOP_HEADERS = ("user-agent", "grpc-", ":")

Metadata = Sequence[tuple[str, str | bytes]]


def forwardable(metadata: Metadata | None) -> list[tuple[str, str | bytes]]:
    """The metadata of one hop that the next hop should carry."""
    return [(k, v) for k, v in metadata or () if not k.startswith(_HOP_HEADERS)]


def credentials_of(auth: PullAuth) -> Credentials:
    if auth.identity_token:
        return Credentials(IDENTITY_TOKEN_USER, auth.identity_token)
    if auth.registry_token and not auth.username:
        return Credentials("", "", registry_token=auth.registry_token)
    return Credentials(auth.username, auth.password, registry_token=auth.registry_token)


def record_pull(keychain: Keychain, request: bytes) -> None:
    """Record (or forget) the credentials of one serialized PullImageRequest."""
    pull = parse_pull_image(request)
    try:
        ref = parse_reference(pull.image)
    except ContentError as exc:
        raise InvalidArgument(f"PullImage {pull.image!r}: {exc}") from None
    auth = pull.auth
    if auth is not None and auth.server_address and \
            config_host(auth.server_address) != config_host(ref.domain):
        log.info("cri: PullImage %s: credentials for %s do not apply to %s; not kept",
                 pull.image, config_host(auth.server_address), ref.domain)
        auth = None
    keychain.record(ref.domain, ref.path, credentials_of(auth) if auth is not None else None)
    log.info("cri: PullImage %s: %s kept in memory for %s/%s", pull.image,
             auth.kind if auth is not None else "no credentials", ref.domain, ref.path)


class CriProxy:
    """The servicer: a generic handler for every ``runtime.v1.ImageService`` method."""

    def __init__(self, channel: grpc.Channel, keychain: Keychain) -> None:
        self._channel = channel
        self._keychain = keychain
        self._calls: dict[str, grpc.UnaryUnaryMultiCallable] = {}

    def add_to_server(self, server: grpc.Server) -> None:
        server.add_generic_rpc_handlers((_Handler(self),))

    def _upstream(self, method: str) -> grpc.UnaryUnaryMultiCallable:
        call = self._calls.get(method)
        if call is None:  # no serializers: bytes in, bytes out
            call = self._calls[method] = self._channel.unary_unary(method)
        return call

    def forward(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        if method == PULL_IMAGE:
            try:
                record_pull(self._keychain, request)
            except InvalidArgument as exc:
                # containerd refuses it in its own words; kubelet should see those.
                log.info("cri: PullImage: nothing kept: %s", exc)
        try:
            response, call = self._upstream(method).with_call(
                request, metadata=forwardable(context.invocation_metadata()),
                timeout=context.time_remaining())
        except grpc.RpcError as exc:
            # A failed call is a grpc.Call too: containerd's code, details and trailers.
            failed: Any = exc
            context.set_trailing_metadata(forwardable(failed.trailing_metadata()))
            context.abort(failed.code(), failed.details() or "")
        context.send_initial_metadata(forwardable(call.initial_metadata()))
        context.set_trailing_metadata(forwardable(call.trailing_metadata()))
        return bytes(response)


class _Handler:
    """A ``grpc.GenericRpcHandler`` by shape (grpcio asks only for ``service``)."""

    def __init__(self, proxy: CriProxy) -> None:
        self._proxy = proxy

    def service(self, handler_call_details: grpc.HandlerCallDetails
                ) -> grpc.RpcMethodHandler | None:
        method = str(handler_call_details.method)
        if not method.startswith(f"/{IMAGE_SERVICE}/"):
            return None  # grpc answers UNIMPLEMENTED (RuntimeService goes to containerd)
        return grpc.unary_unary_rpc_method_handler(partial(self._proxy.forward, method))


async def serve_cri_proxy(socket: Path, upstream: str, keychain: Keychain, *,
                          task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED
                          ) -> NoReturn:
    """Serve the proxy on ``socket`` until cancelled; reports the socket once it accepts
    connections. ``upstream`` is containerd's socket, dialled on the first call (containerd
    may start after snapfs: it has to, with a proxy snapshotter)."""
    path = upstream.removeprefix("unix://").removeprefix("unix:")
    channel = grpc.insecure_channel(f"unix:{path}")
    try:
        log.info("cri: image service proxy to %s", path)
        await serve_grpc(CriProxy(channel, keychain), str(socket), task_status=task_status)
    finally:
        channel.close()


__all__ = ["CriProxy", "credentials_of", "forwardable", "record_pull", "serve_cri_proxy"]
