"""``snapfs demo``: pull an image lazily from a local registry and run a container from it.

Must not hold logic beyond parse, call, print: the demo is ``snapfs.dev.demo``'s.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from snapfs.cli._common import add_lazy_arg, client_command


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "demo", help="build, convert, lazily pull and run a small image on a private registry",
        description="Everything runs on 127.0.0.1 under a temporary directory that is removed "
        "afterwards. Needs root (or a user with FUSE and user namespaces).")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--json", action="store_true", help="print the report as JSON at the end")
    add_lazy_arg(p)
    p.set_defaults(handler=demo)


@client_command
async def demo(args: argparse.Namespace) -> int:
    from snapfs.dev.demo import demo_main

    report = await demo_main(keep=args.keep, lazy=args.lazy or "auto")
    if args.json:
        print(json.dumps({k: getattr(report, k) for k in report.__slots__}))
    return 0 if report.exit_status == 0 else 1
