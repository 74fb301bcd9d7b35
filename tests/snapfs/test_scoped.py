"""Clients sharing one snapshotter (snapfs.snapshot.scoped): what each sees and may remove.

In-process, two clients (containerd's proxy name, snapfs's commands) on one real snapshotter;
tests/snapfs/test_concurrency.py has the same through a daemon with containerd's GC.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from snapfs.errors import AlreadyExists, FailedPrecondition, NotFound
from snapfs.snapshot.labels import LABEL_SNAPSHOT_REF
from snapfs.snapshot.scoped import CLIENT_SCOPE
from snapfs.snapshot.snapshotter import Snapshotter
from snapfs.snapshot.types import Info
from tests.snapfs.test_snapshotter import FakeRemote


def names(infos: Sequence[Info]) -> list[str]:
    return sorted(i.name for i in infos)


async def test_a_client_sees_and_removes_only_what_it_holds(tmp_path: Path) -> None:
    sn = Snapshotter.open(tmp_path)
    cli, ctrd = sn.scoped(CLIENT_SCOPE), sn.scoped("snapfs")
    try:
        await cli.prepare("x")
        await cli.commit("base", "x")
        await cli.prepare("run", "base")
        assert names(await ctrd.list()) == []
        for call in (ctrd.stat("base"), ctrd.remove("run"), ctrd.remove("base"),
                     ctrd.mounts("run"), ctrd.prepare("c", "base")):
            with pytest.raises(NotFound):
                await call
        assert names(await cli.list()) == ["base", "run"]
        assert names(await sn.list()) == ["base", "run"]  # the whole root
    finally:
        sn.close()


async def test_a_snapshot_both_commit_is_held_by_both(tmp_path: Path) -> None:
    sn = Snapshotter.open(tmp_path)
    cli, ctrd = sn.scoped(CLIENT_SCOPE), sn.scoped("snapfs")
    try:
        await cli.prepare("a")
        await cli.commit("c1", "a")
        await cli.prepare("b", "c1")
        await cli.commit("c2", "b")
        # containerd commits the same chain ID (a concurrent unpack): it holds the existing one
        # and, with it, every ancestor.
        await ctrd.prepare("k")
        with pytest.raises(AlreadyExists):
            await ctrd.commit("c2", "k")
        await ctrd.remove("k")
        assert names(await ctrd.list()) == ["c1", "c2"]
        await ctrd.prepare("ctr-run", "c2")
        # One of two holders removing only drops its hold, unless it has a child it sees.
        with pytest.raises(FailedPrecondition, match="has children"):
            await ctrd.remove("c2")
        await ctrd.remove("ctr-run")
        await ctrd.remove("c2")
        await ctrd.remove("c1")
        assert names(await ctrd.list()) == []
        assert names(await cli.list()) == ["c1", "c2"]
        await cli.remove("c2")
        await cli.remove("c1")
        assert names(await sn.list()) == []
    finally:
        sn.close()


async def test_a_remote_layer_already_there_is_held_by_the_next_client(tmp_path: Path) -> None:
    lower = tmp_path / "layer"
    lower.mkdir()
    sn = Snapshotter.open(tmp_path / "root", remote=FakeRemote(lower))
    cli, ctrd = sn.scoped(CLIENT_SCOPE), sn.scoped("snapfs")
    try:
        for client in (cli, ctrd):
            with pytest.raises(AlreadyExists):
                await client.prepare("extract", "", {LABEL_SNAPSHOT_REF: "sha256:l1"})
        # containerd's next step of the handshake: List filtered on the ref label.
        flt = [f'labels."{LABEL_SNAPSHOT_REF}"==sha256:l1']
        assert names(await ctrd.list(flt)) == ["sha256:l1"]
        await ctrd.remove("sha256:l1")
        assert names(await cli.list()) == ["sha256:l1"]
    finally:
        sn.close()


async def test_records_from_before_scopes_are_everyones(tmp_path: Path) -> None:
    sn = Snapshotter.open(tmp_path)
    try:
        await sn.prepare("old")  # no client: as a record written before scopes existed
        assert names(await sn.scoped("snapfs").list()) == ["old"]
        await sn.scoped(CLIENT_SCOPE).remove("old")
        assert names(await sn.list()) == []
    finally:
        sn.close()
