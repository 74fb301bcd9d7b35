"""Flags every client command shares (config, root, state, daemon socket) and the config they
build, and :func:`client_command`, which gives each command the same behaviour on signals and
errors. The daemon's own flags live in ``serve``.

Must not hold any command's logic: only what every command's flags and handler share.
"""

from __future__ import annotations

import argparse
import functools
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snapfs.config import Config

Handler = Callable[[argparse.Namespace], Awaitable[int]]
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, metavar="FILE", help="TOML config file")
    p.add_argument("--root", default=None, metavar="DIR", help="snapfs root (content, snapshots)")
    p.add_argument("--state", default=None, metavar="DIR", help="runtime state (sockets, mounts)")
    p.add_argument("--address", default=None, metavar="SOCK",
                   help="daemon socket; used when a daemon serves there, else runs in-process")


def add_lazy_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lazy", choices=("auto", "required"), default=None,
                   help="required: fail rather than pull lazy-capable layers in full when FUSE "
                   "cannot be served here, e.g. /dev/fuse not openable (default: the config's "
                   "[fetch] lazy, else auto; a daemon uses its own)")


def engine_config(args: argparse.Namespace) -> Config:
    from snapfs.config import load_config, with_overrides

    return with_overrides(load_config(args.config, permissive=args.permissive),
                          root=args.root, state=args.state, lazy=getattr(args, "lazy", None),
                          address=args.address)


def client_command(handler: Handler) -> Handler:
    """Wrap a client command so that:

    - SIGINT/SIGTERM cancel it — its cleanup (unmounts, half-made snapshots) runs under
      trio's cancellation rather than being cut short by KeyboardInterrupt or the default
      SIGTERM action — and it exits 128+signal, as a process killed by it would appear;
      while a container runs, runtime.container takes these signals over and forwards them;
    - an error from inside a nursery (an ExceptionGroup of one) reaches ``snapfs.cli.main``
      as itself, to be printed as one line.
    """

    @functools.wraps(handler)
    async def wrapped(args: argparse.Namespace) -> int:
        import trio

        from snapfs.errors import single_errors

        received: list[int] = []
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals, single_errors():
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    async for signum in signals:
                        received.append(signum)
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(watch)
                status = await handler(args)
                nursery.cancel_scope.cancel()
        return 128 + received[0] if received else status

    return wrapped


class SnapfsCommandError(Exception):
    """Raised by a subcommand for a failure the user caused; printed as one line, exit 125."""
