"""Adding a lazy layer to the mount is all or nothing (``snapfs.lazy.attach``, issue #12
item 3): a failure after the mount took the layer leaves no directory and no row behind,
and the next Prepare of that layer mounts it afresh."""

from __future__ import annotations

from pathlib import Path

import pytest

from content.digest import digest_bytes
from snapfs.lazy.fetcher import LayerFetcher
from snapfs.lazy.layers import layer_id
from tests.snapfs.test_fetcher import MemSource
from tests.snapfs.test_remote import estargz_blob, labels, open_lazy, prepare


async def test_a_layer_that_fails_half_way_leaves_nothing_mounted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blob = estargz_blob()
    d = digest_bytes(blob)
    lazy = open_lazy(tmp_path, MemSource({d: blob}))

    async def broken_cache(self: LayerFetcher) -> None:
        raise OSError(5, "Input/output error", str(tmp_path / "chunks"))

    with monkeypatch.context() as patch:
        patch.setattr(LayerFetcher, "refresh_cached", broken_cache)
        with pytest.raises(OSError):
            await prepare(lazy, "k", "", labels(d))
    assert lazy.fs.layer_ids() == []  # taken off the mount again
    assert lazy.table.live(layer_id(d)) is None
    assert lazy.db.get(d) is None
    path = await prepare(lazy, "k", "", labels(d))  # the next Prepare mounts it afresh
    assert path == str(tmp_path / "fuse" / layer_id(d))
    assert lazy.fs.layer_ids() == [layer_id(d)]
    assert await lazy.fetcher(d).read("etc/hostname", 0, 100) == b"snapfs\n"
    lazy.db.close()
