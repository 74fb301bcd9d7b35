"""The one table from errors to errno, and the decorator every FUSE handler wears.

An exception escaping a pyfuse3 handler takes the whole mount down, so only
``pyfuse3.FUSEError`` may leave one. Known errors map through ``errno_for``; anything else
is a bug or an unexpected state: it becomes EIO, is logged with the layer and path, and is
reported (``Reporter``); it fails that one request, never the requests after it (a layer is
taken out of service only by a verification failure, which its view decides).

Must not hold handler logic: it translates errors and reports the unexpected, nothing else.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import pyfuse3

from content.errors import (
    AlreadyExists,
    ContentError,
    DigestMismatch,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Unauthorized,
    Unavailable,
)

log = logging.getLogger(__name__)

# Order matters: the first matching class wins (DigestMismatch is an InvalidArgument).
# A read that fails verification or cannot reach the registry is an I/O error to the
# reader; EAGAIN would make well-behaved programs spin.
ERRNO_TABLE: tuple[tuple[type[ContentError], int], ...] = (
    (NotFound, errno.ENOENT),
    (AlreadyExists, errno.EEXIST),
    (DigestMismatch, errno.EIO),
    (InvalidArgument, errno.EINVAL),
    (Unavailable, errno.EIO),
    (Unauthorized, errno.EACCES),
    (FailedPrecondition, errno.EIO),
)


def errno_for(exc: BaseException) -> int | None:
    """The errno for an expected error, or None for a bug / unexpected state."""
    if isinstance(exc, pyfuse3.FUSEError):
        return exc.errno
    if isinstance(exc, Internal):
        return None
    if isinstance(exc, ContentError):
        for cls, code in ERRNO_TABLE:
            if isinstance(exc, cls):
                return code
        return None
    if isinstance(exc, OSError):
        return exc.errno or errno.EIO
    return None


class Reporter(Protocol):
    """What the decorator tells the handler's owner: one call per request, one per failure."""

    def note_request(self, op: str, target: int, by_fh: bool) -> None: ...

    def note_failure(
        self, op: str, target: int, by_fh: bool, exc: BaseException, unexpected: bool
    ) -> None: ...


S = TypeVar("S", bound=Reporter)
P = ParamSpec("P")
R = TypeVar("R")


def fuse_handler(
    op: str, *, by_fh: bool = False
) -> Callable[
    [Callable[Concatenate[S, int, P], Awaitable[R]]],
    Callable[Concatenate[S, int, P], Coroutine[Any, Any, R]],
]:
    """Count the request against its target (an inode, or a file handle when ``by_fh``)
    and translate whatever it raises into ``FUSEError``."""

    def wrap(
        fn: Callable[Concatenate[S, int, P], Awaitable[R]],
    ) -> Callable[Concatenate[S, int, P], Coroutine[Any, Any, R]]:
        @functools.wraps(fn)
        async def handler(self: S, target: int, /, *args: P.args, **kwargs: P.kwargs) -> R:
            try:
                self.note_request(op, target, by_fh)
                return await fn(self, target, *args, **kwargs)
            except pyfuse3.FUSEError:
                raise
            except Exception as exc:
                code = errno_for(exc)
                try:
                    self.note_failure(op, target, by_fh, exc, code is None)
                except Exception:  # reporting must never take the mount down either
                    log.exception("fuse %s on %d: failure report failed", op, target)
                raise pyfuse3.FUSEError(errno.EIO if code is None else code) from None

        return handler

    return wrap
