"""The seam between the snapshotter and lazy (remote) layers.

A Prepare carrying ``containerd.io/snapshot.ref`` asks :meth:`RemoteLayers.prepare_remote`
first; a :class:`RemoteLayer` it offers is committed under the ref name, and the layer's own
record is written by ``record`` **inside the same write transaction** as the snapshot record,
so that a crash can never leave one without the other. Removing the last snapshot on a layer
calls ``forget_remote`` inside the Remove transaction, then ``release_remote`` after it.
``lowerdir`` says where a committed layer's files are now (a fully fetched layer moves from
FUSE to a plain directory without any snapshot record being rewritten).

A :class:`PrepareObserver` (startup profiles) hears of each remote layer committed (or found
committed) and, before an active snapshot is created on remote layers, of its parents — a
container is about to start on them.

Must not know how layers are fetched or served: this module is Protocols and one value type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from snapfs.snapshot.metastore import Transaction
from snapfs.snapshot.types import Usage


@dataclass(frozen=True, slots=True)
class RemoteLayer:
    """A layer a remote can serve: its read-only directory, and how to record it."""

    lower: str
    # Called inside the snapshot's write transaction (plain def: nothing may await there).
    record: Callable[[Transaction], None] | None = None


class RemoteLayers(Protocol):
    """The lazy-layer seam: offer a read-only directory for a layer, or None to unpack."""

    async def prepare_remote(self, key: str, parent: str,
                             labels: Mapping[str, str]) -> RemoteLayer | None: ...


class ManagedRemoteLayers(RemoteLayers, Protocol):
    """A remote whose layers may move (materialised) and be released."""

    def lowerdir(self, lower: str) -> str:
        """Where the files of the remote layer committed with ``lower`` are now."""
        ...

    def forget_remote(self, tx: Transaction, lower: str) -> None:
        """Inside the transaction that removes the last snapshot on ``lower``: drop the
        layer's persistent record."""
        ...

    async def release_remote(self, lower: str) -> None:
        """After that transaction: stop the layer's work, drop its directories once unused."""
        ...

    async def check_reuse(self, lower: str, labels: Mapping[str, str]) -> None:
        """Return if the snapshot committed on ``lower`` may answer a Prepare for the layer
        ``labels`` name (under the same chain ID); raise (naming both) if it may not."""
        ...


class CollectingRemoteLayers(Protocol):
    """A remote's part in Cleanup and Usage (a remote offers it as its ``gc`` attribute)."""

    def forget_unreferenced(self, tx: Transaction, lowers: set[str]) -> list[str]:
        """Inside Cleanup's transaction: drop the records of layers none of ``lowers``
        names; return their lowers, for ``release_remote`` after the commit."""
        ...

    async def collect(self) -> object:
        """After Cleanup's transaction: delete what no layer needs any more."""
        ...

    def local_usage(self, lower: str) -> Usage | None:
        """What the layer at ``lower`` holds on local disk (None: unknown here)."""
        ...


class PrepareObserver(Protocol):
    """Told of Prepares that concern remote layers; must not raise, and must not hold a
    Prepare long (its own bounded waits only)."""

    async def remote_prepared(self, lower: str, labels: Mapping[str, str]) -> None:
        """A remote layer is committed at ``lower`` (now or by an earlier Prepare) for a
        Prepare carrying ``labels``."""
        ...

    async def before_active(self, key: str,
                            parents: Sequence[tuple[str, Mapping[str, str]]]) -> None:
        """An active snapshot ``key`` is about to be created on remote layers: ``parents``
        are their (lower, labels), bottom layer first (the mounts are planned after this
        returns)."""
        ...


def collecting(remote: RemoteLayers | None) -> CollectingRemoteLayers | None:
    """The remote's ``gc`` if it has one."""
    gc = getattr(remote, "gc", None)
    ok = gc is not None and all(callable(getattr(gc, name, None)) for name in
                                ("forget_unreferenced", "collect", "local_usage"))
    return gc if ok else None


def is_managed(remote: RemoteLayers | None) -> bool:
    """Whether ``remote`` implements :class:`ManagedRemoteLayers` (structurally)."""
    return remote is not None and all(
        callable(getattr(remote, name, None))
        for name in ("lowerdir", "forget_remote", "release_remote", "check_reuse"))


def remote_parents(tx: Transaction, parent: str) -> list[tuple[str, Mapping[str, str]]]:
    """(lower, labels) of the remote layers below a new snapshot on ``parent``, bottom first
    (none if ``parent`` does not exist: creating the snapshot reports that)."""
    top = tx.find(parent)
    if top is None:
        return []
    chain = [top, *tx.parents(top)]
    return [(p.lower, dict(p.labels)) for p in reversed(chain) if p.lower]


__all__ = ["CollectingRemoteLayers", "ManagedRemoteLayers", "PrepareObserver", "RemoteLayer",
           "RemoteLayers", "collecting", "is_managed", "remote_parents"]
