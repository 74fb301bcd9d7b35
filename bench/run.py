"""The ``ttfr`` benchmark: images → private registry → shaped link → every mode, interleaved.

Repetitions are interleaved across modes (rep 1 of every mode, then rep 2, …) so that a
slow drift of the machine (another tenant, thermal state) hits every mode alike.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from bench.images import (
    INDEXED,
    PUBLISHED,
    ImageSpec,
    build_variants,
    image_bytes,
    largest_file,
    push_image,
    spec,
)
from bench.link import LinkSettings, ShapedLink, open_shaped_link
from bench.measure import Sample
from bench.modes import JOBS, ContainerdNative, Mode, StargzMode, Target, run_job
from bench.report import add_ratios, header, markdown, mode_result, unavailable, write_results
from bench.snapfs_modes import publish_profile, record_profile, snapfs_modes
from content.errors import ContentError, FailedPrecondition, InvalidArgument
from content.image import Image
from content.reference import parse_reference
from content.registry import open_registry
from snapfs.app.gzindex import index_image
from snapfs.dev.localregistry import run_local_registry

log = logging.getLogger(__name__)

REP_TIMEOUT = 300.0
IO_MODES = ("containerd-overlayfs", "snapfs-run-estargz")


@dataclass(frozen=True, slots=True)
class BenchConfig:
    images: tuple[str, ...]
    modes: tuple[str, ...] | None  # None: all
    reps: int
    link: LinkSettings
    workdir: Path
    results: Path
    io: bool = True
    rep_timeout: float = REP_TIMEOUT
    jobs: tuple[str, ...] = tuple(JOBS)


def all_modes() -> list[Mode]:
    return [ContainerdNative(), StargzMode("stargz-snapshotter", "estargz"),
            StargzMode("stargz-snapshotter-profile", "estargz-prof"), *snapfs_modes()]


def select_modes(names: Sequence[str] | None) -> list[Mode]:
    modes = all_modes()
    if names is None:
        return modes
    known = {m.name for m in modes}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidArgument(f"bench modes {', '.join(unknown)}: unknown; have "
                              f"{', '.join(sorted(known))}")
    return [m for m in modes if m.name in names]


def _repo(name: str, variant: str) -> str:
    """The unmodified image with a side index, and the eStargz image with a published
    profile, live in repositories of their own: their manifests are the gzip and estargz
    variants', and referrers are per repository (so the gzip mode stays native, and the plain
    estargz mode finds no profile)."""
    return {INDEXED: f"bench/{name}-indexed",
            PUBLISHED: f"bench/{name}-published"}.get(variant, f"bench/{name}")


async def _push_all(registry_host: str, name: str, variants: dict[str, Image]) -> None:
    async with open_registry(insecure=True) as registry:
        for variant, image in variants.items():
            ref = f"{registry_host}/{_repo(name, variant)}:{variant}"
            await push_image(registry, ref, image)
            if variant == INDEXED:
                await index_image(registry, parse_reference(ref), push=True)


def _target(image: ImageSpec, variants: dict[str, Image], link: ShapedLink,
            scratch: Path, big_file: str) -> Target:
    return Target(image, {v: f"{link.host}/{_repo(image.name, v)}:{v}" for v in variants},
                  {v: str(img.layers[-1].diff_id) for v, img in variants.items()},
                  link, scratch, big_file)


async def _measure_image(config: BenchConfig, image: ImageSpec, registry_host: str,
                         scratch: Path) -> dict[str, Any]:
    print(f"[{image.name}] building images", file=sys.stderr, flush=True)
    scratch.mkdir(parents=True, exist_ok=True)
    rootfs, variants = await build_variants(image, config.workdir / "rootfs")
    await _push_all(registry_host, image.name, variants)
    big_file = await trio.to_thread.run_sync(largest_file, rootfs)
    out: dict[str, Any] = {"workloads": {"start": list(image.workload),
                                         "read-usr": list(image.read_workload)},
                           "big_file": big_file, "modes": {}, "io": {}}
    modes = select_modes(config.modes)
    async with open_shaped_link(registry_host, config.link) as link:
        target = _target(image, variants, link, scratch, big_file)
        if any(m.variant.endswith("-prof") for m in modes):
            try:
                profile = await record_profile(target, "estargz")
                _, prof = await build_variants(image, config.workdir / "rootfs", profile)
                prof = {v: i for v, i in prof.items() if v.endswith("-prof")}
                await _push_all(registry_host, image.name, prof)
                variants.update(prof)
                target = _target(image, variants, link, scratch, big_file)
                out["profile_files"] = len(profile)
            except ContentError as exc:
                out["profile_error"] = str(exc)
        if any(m.variant == PUBLISHED for m in modes):
            try:
                out["published_profile_files"] = await publish_profile(target, PUBLISHED)
            except ContentError as exc:
                out["published_profile_error"] = str(exc)
                del variants[PUBLISHED]  # its modes are reported unavailable, with this
                target = _target(image, variants, link, scratch, big_file)
        out["image_bytes"] = {v: image_bytes(i) for v, i in variants.items()}
        ready: list[Mode] = []
        for mode in modes:
            try:
                await mode.prepare(target)
                ready.append(mode)
            except ContentError as exc:
                reason = str(exc)
                if mode.variant.endswith("-prof") and "profile_error" in out:
                    reason = f"no startup profile: {out['profile_error']}"
                if mode.variant == PUBLISHED and "published_profile_error" in out:
                    reason = f"no published profile: {out['published_profile_error']}"
                out["modes"][mode.name] = unavailable(reason)
        samples: dict[str, dict[str, list[Sample]]] = {m.name: {} for m in ready}
        errors: dict[str, list[str]] = {m.name: [] for m in ready}
        for rep in range(config.reps):
            for mode in ready:
                for job in config.jobs:
                    print(f"[{image.name}] rep {rep + 1}/{config.reps} {mode.name} {job}",
                          file=sys.stderr, flush=True)
                    try:
                        with trio.fail_after(config.rep_timeout):
                            base = scratch / f"{rep}-{ready.index(mode)}-{job}"
                            async with mode.open_env(target, base) as env:
                                got = await run_job(mode, env, target, job, rep)
                        for workload, sample in got.items():
                            samples[mode.name].setdefault(workload, []).append(sample)
                    except (ContentError, trio.TooSlowError) as exc:
                        errors[mode.name].append(f"{job}: {str(exc) or 'timed out'}")
        for mode in ready:
            out["modes"][mode.name] = {"variant": mode.variant,
                                       **mode_result(samples[mode.name], errors[mode.name])}
        out["modes"] = {m.name: out["modes"][m.name] for m in modes}  # run order
        if config.io:
            for mode in ready:
                if mode.name not in IO_MODES or not samples[mode.name]:
                    continue
                try:
                    with trio.fail_after(config.rep_timeout):
                        out["io"].update(await mode.measure_io(target))
                except (ContentError, OSError, trio.TooSlowError) as exc:
                    out["io"][mode.name] = {"reason": str(exc) or "timed out"}
    add_ratios(out)
    return out


async def run_benchmark(config: BenchConfig) -> int:
    """Run it all; SIGTERM (e.g. from ``timeout``) cancels it so every daemon, mount and
    temp dir is still cleaned up."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_cancel_on_sigterm, nursery.cancel_scope)
        code = await _run_benchmark(config)
        nursery.cancel_scope.cancel()
    return code


async def _cancel_on_sigterm(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            print("bench: SIGTERM, cleaning up", file=sys.stderr, flush=True)
            scope.cancel()
            return


async def _run_benchmark(config: BenchConfig) -> int:
    if os.geteuid() != 0:
        raise FailedPrecondition("the benchmark needs root (drop_caches, containerd, mounts)")
    unknown = [j for j in config.jobs if j not in JOBS]
    if unknown or not config.jobs:
        raise InvalidArgument(f"--jobs {','.join(config.jobs)}: have {', '.join(JOBS)}")
    if config.reps < 1:
        raise InvalidArgument(f"--reps {config.reps}: need at least 1")
    images = [spec(n) for n in config.images]
    config.workdir.mkdir(parents=True, exist_ok=True)
    result = header(config.link, config.reps)
    result["jobs"] = list(config.jobs)
    result["images"] = {}
    # Short: containerd's socket paths under it must fit in sun_path (108 bytes).
    scratch = Path(tempfile.mkdtemp(prefix="sfb-", dir="/tmp"))
    regdir = Path(tempfile.mkdtemp(prefix="registry-", dir=config.workdir))
    try:
        with run_local_registry(regdir) as registry:
            for image in images:
                try:
                    result["images"][image.name] = await _measure_image(
                        config, image, registry.host, scratch / image.name)
                except ContentError as exc:
                    result["images"][image.name] = {"error": str(exc)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(regdir, ignore_errors=True)
    stem = "ttfr-" + result["date"].replace(":", "").replace("+0000", "Z")
    json_path, png_path = write_results(result, config.results, stem)
    print(markdown(result))
    print(f"results: {json_path}\nchart:   {png_path}")
    return 0
