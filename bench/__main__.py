"""``python -m bench ttfr`` (the benchmark), ``python -m bench shaper`` (the link proxy),
``python -m bench lazyread`` (read throughput through one lazy layer, issue #7) and
``python -m bench cli-startup`` (start-up time of snapfs commands)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from bench.link import LinkSettings, run_shaper_process
from bench.shaper import parse_duration_ms, parse_rate
from content.errors import ContentError

DEFAULT_WORKDIR = Path("/var/tmp/snapfs-bench")
RESULTS = Path(__file__).resolve().parent / "results"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("ttfr", help="time to first response, every mode on every image")
    t.add_argument("--images", default="busybox,debian-python,debian-gcc",
                   help="comma-separated: busybox, debian-python, debian-gcc")
    t.add_argument("--modes", default="all", help="comma-separated mode names, or 'all'")
    t.add_argument("--jobs", default="start,read-usr",
                   help="comma-separated: start (start, second-start, start-local), "
                   "read-usr (read-usr, read-usr-local)")
    t.add_argument("--reps", type=int, default=5, help="cold repetitions per mode (default 5)")
    t.add_argument("--rate", default="100mbit", help="link rate (default 100mbit)")
    t.add_argument("--rtt", default="20ms", help="link round-trip time (default 20ms)")
    t.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                   help="scratch space and the rootfs cache (default /var/tmp/snapfs-bench)")
    t.add_argument("--results", type=Path, default=RESULTS, help="JSON and PNG go here")
    t.add_argument("--rep-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="a repetition taking longer is recorded as failed (default 300)")
    t.add_argument("--no-io", action="store_true", help="skip the read-throughput measures")

    s = sub.add_parser("shaper", help="run the shaped loopback proxy in the foreground")
    s.add_argument("--listen", type=int, default=0, help="port on 127.0.0.1 (0: pick one)")
    s.add_argument("--upstream", required=True, metavar="HOST:PORT")
    s.add_argument("--rate", default="100mbit")
    s.add_argument("--rtt", default="20ms")

    from bench.lazyread import add_parser as add_lazyread

    add_lazyread(sub)
    from bench.cli_startup import add_parser as add_cli_startup

    add_cli_startup(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "cli-startup":
            from bench.cli_startup import run_cli_startup

            return run_cli_startup(args)
        if args.command == "lazyread":
            from bench.lazyread import run_lazyread

            return trio.run(run_lazyread, args)
        link = LinkSettings(parse_rate(args.rate), parse_duration_ms(args.rtt))
        if args.command == "shaper":
            trio.run(run_shaper_process, args.listen, args.upstream, link.rate_bps, link.rtt_ms)
            return 0
        from bench.run import BenchConfig, run_benchmark

        config = BenchConfig(
            images=tuple(i for i in args.images.split(",") if i),
            modes=None if args.modes == "all" else tuple(m for m in args.modes.split(",") if m),
            reps=args.reps, link=link, workdir=args.workdir, results=args.results,
            io=not args.no_io, rep_timeout=args.rep_timeout,
            jobs=tuple(j for j in args.jobs.split(",") if j),
        )
        return trio.run(run_benchmark, config)
    except ContentError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
