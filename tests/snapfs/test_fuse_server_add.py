"""Daemon-less commands adding one layer to the shared ``snapfs fuse-server`` at once (issue
#12 item 5): each command preparing a lazy layer that no other command has committed yet
sends the server an ``add``. The second must get the first's view (``existed``), never
"already mounted": that AlreadyExists reached its Prepare, which a puller reads as the
remote-snapshot handshake ("committed"), and its Stat of the chain found nothing (one of 16
concurrent ``snapfs run`` exited 125, "snapshot <first chain ID> not found").

In-process, against the real kernel: the server's ``add`` is the seam both commands reach.
"""

from __future__ import annotations

import os
from pathlib import Path

import trio

from content.digest import digest_bytes
from content.lazyformat import load_lazy_layer
from content.reference import parse_reference
from snapfs.lazy.fuse_server import FuseServer, ServerOptions
from snapfs.lazy.server_run import serve_fuse_server
from snapfs.lazy.source import Recorder, layer_id
from tests.snapfs.fuse_memlayer import need_fuse
from tests.snapfs.test_fetcher import MemSource
from tests.snapfs.test_remote import REF, estargz_blob

TAIL = 64 * 1024


async def test_concurrent_adds_of_one_layer_share_one_view(tmp_path: Path) -> None:
    need_fuse()
    blob = estargz_blob()
    digest = digest_bytes(blob)
    # The ranges a command's indexer read, which the server rebuilds (and verifies) it from.
    recorder = Recorder(MemSource({digest: blob}), parse_reference(REF), digest)
    layer = await load_lazy_layer(recorder, len(blob), what="test layer", tail_size=TAIL)
    assert layer is not None
    ident = layer_id(digest)
    offsets = sorted(recorder.ranges)
    head = {"op": "add", "ident": ident, "digest": str(digest), "ref": REF, "size": len(blob),
            "format": layer.format, "toc_digest": str(layer.toc_digest), "tail_size": TAIL,
            "ranges": [[o, len(recorder.ranges[o])] for o in offsets]}
    body = b"".join(recorder.ranges[o] for o in offsets)
    (tmp_path / "state").mkdir()
    options = ServerOptions(root=tmp_path / "root", state=tmp_path / "state")
    async with trio.open_nursery() as nursery:
        server: FuseServer = await nursery.start(serve_fuse_server, options)
        try:
            replies: list[bool] = []

            async def add() -> None:
                reply = await server.add(dict(head), body)
                replies.append(bool(reply["existed"]))

            # Both start before either has built its view (building awaits a thread).
            async with trio.open_nursery() as adds:
                for _ in range(2):
                    adds.start_soon(add)
            assert sorted(replies) == [False, True]
            assert list(server.views) == [ident]
            assert server.fs.layer_ids() == [ident]
            listed = await trio.to_thread.run_sync(os.listdir, server.fs.mountpoint / ident)
            assert sorted(listed) == ["empty", "etc", "usr"]
        finally:
            nursery.cancel_scope.cancel()
