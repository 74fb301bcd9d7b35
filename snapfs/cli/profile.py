"""``snapfs profile show|push|rm IMAGE``: startup profiles recorded here, and publishing them.

Must not hold logic beyond parse, call, print: ``snapfs.app.profiles`` does the work.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from snapfs.cli._common import add_engine_args, client_command, engine_config

if TYPE_CHECKING:
    from content.profiledoc import Profile


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "profile", help="startup profiles: show, publish (push) or remove them",
        description="A startup profile lists the files an image's first container on this "
                    "node read, in order, per layer. It is recorded by default and used by "
                    "every lazy pull that finds one published for the image.")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="the files of IMAGE's profile, in order, per layer",
                          description="Show the local profile of IMAGE, or (none here, or "
                                      "--remote) the one published for its manifest.")
    where = show.add_mutually_exclusive_group()
    where.add_argument("--local", dest="where", action="store_const", const="local",
                       help="only the profile recorded here")
    where.add_argument("--remote", dest="where", action="store_const", const="remote",
                       help="only the profile published in the registry")
    show.add_argument("--json", action="store_true", help="the profile document as JSON")
    show.set_defaults(where="auto", handler=show_cmd)
    push = sub.add_parser("push", help="publish IMAGE's local profile to its registry",
                          description="Push IMAGE's local profile as an OCI artifact whose "
                                      "subject is its manifest (needs push rights; the image "
                                      "itself is unchanged).")
    push.set_defaults(handler=push_cmd)
    rm = sub.add_parser("rm", help="remove IMAGE's local profile (--remote: the published)",
                        description="Remove IMAGE's local profile; with --remote also the "
                                    "published ones (if the registry allows deletion).")
    rm.add_argument("--remote", action="store_true", help="also the published profiles")
    rm.set_defaults(handler=rm_cmd)
    for q in (show, push, rm):
        add_engine_args(q)
        q.add_argument("image", metavar="IMAGE", help="image reference")


def _document(profile: Profile) -> dict[str, Any]:
    from content.profiledoc import encode_document

    doc: dict[str, Any] = json.loads(encode_document(profile))
    return doc


def _print(profile: Profile, source: str, location: str) -> None:
    print(f"profile of {profile.image or '?'} (manifest {profile.manifest.short()}), "
          f"{source}: {location}")
    print(f"recorded {profile.created or '?'} over {profile.seconds:.1f} s: "
          f"{len(profile.files)} file(s) in {len(profile.layers)} layer(s)")
    order = {f: n for n, f in enumerate(profile.files, 1)}
    for i, layer in enumerate(profile.layers):
        files = [f for f in profile.files if f[0] == i]
        print(f"layer {layer} ({len(files)} file(s))")
        for f in files:
            print(f"  {order[f]:>5}  {f[1]}")


@client_command
async def show_cmd(args: argparse.Namespace) -> int:
    from snapfs.app.profiles import show_profile

    shown = await show_profile(engine_config(args), args.image, args.where)
    if args.json:
        print(json.dumps({"source": shown.source, "location": shown.location,
                          "profile": _document(shown.profile)}))
    else:
        _print(shown.profile, shown.source, shown.location)
    return 0


@client_command
async def push_cmd(args: argparse.Namespace) -> int:
    from snapfs.app.profiles import push_profile

    pushed = await push_profile(engine_config(args), args.image)
    print(f"pushed {pushed.artifact} ({len(pushed.profile.files)} file(s), subject "
          f"{pushed.profile.manifest})")
    for old in pushed.replaced:
        print(f"replaced {old}")
    return 0


@client_command
async def rm_cmd(args: argparse.Namespace) -> int:
    from snapfs.app.profiles import remove_profile

    removed = await remove_profile(engine_config(args), args.image, remote=args.remote)
    print(f"local profile of {removed.manifest.short()}: "
          f"{'removed' if removed.local else 'none'}")
    if args.remote:
        for d in removed.deleted:
            print(f"deleted {d}")
        for d, why in removed.kept:
            print(f"not deleted {d}: {why}")
        if not removed.deleted and not removed.kept:
            print("none published")
    return 1 if removed.still_listed else 0
