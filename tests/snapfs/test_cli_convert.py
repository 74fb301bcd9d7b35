"""``snapfs convert`` end to end against a real registry: the digest it prints is what DST
resolves to, its layers are lazy, and failures are one line with exit status 125.

The tests are synchronous because ``main`` runs its own trio loop."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from content import mediatypes as mt
from content.digest import parse_digest
from content.image import parse_manifest
from content.lazyformat import load_lazy_layer, prefetch_set
from content.reference import Reference, parse_reference
from content.registry import open_registry
from content.tarlayer import Entry
from snapfs.cli import EXIT_SNAPFS_ERROR, main
from tests.fixtures.images import ImageFactory, PushedImage
from tests.fixtures.registry import RegistryServer

LAYER = [Entry("etc", "dir"), Entry("etc/motd", data=b"hello\n"),
         Entry("bin", "dir"), Entry("bin/tool", data=b"\x7fELF" + b"x" * 5000, mode=0o755)]


def push(factory: ImageFactory, registry: RegistryServer, repo: str) -> PushedImage:
    async def run() -> PushedImage:
        return await factory.push(registry, repo, [LAYER], compression="zstd")
    return trio.run(run)


def lazy_prefetch(ref: Reference) -> tuple[str, list[str] | None]:
    """The first layer's media type and its startup files, read through the registry."""
    async def run() -> tuple[str, list[str] | None]:
        async with open_registry() as reg:
            resolved = await reg.resolve(ref)
            desc = parse_manifest(resolved.manifest_bytes).layers[0]

            async def read_range(offset: int, length: int) -> bytes:
                return await reg.fetch_range(ref, desc.digest, offset, length)

            layer = await load_lazy_layer(read_range, desc.size, what=str(desc.digest),
                                          annotations=dict(desc.annotations))
            assert layer is not None
            return desc.media_type, prefetch_set(layer)
    return trio.run(run)


def resolve_digest(ref: Reference) -> str:
    async def run() -> str:
        async with open_registry() as reg:
            return str((await reg.resolve(ref)).descriptor.digest)
    return trio.run(run)


def test_convert_prints_the_pushed_digest(registry: RegistryServer, repo_name: str,
                                          image_factory: ImageFactory, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    pushed = push(image_factory, registry, repo_name)
    profile = tmp_path / "profile.txt"
    profile.write_text("# startup files\n/bin/tool\n")
    dst = f"{registry.host}/{repo_name}:esgz"
    code = main(["convert", "--prioritize", str(profile), "--chunk-size", "1024",
                 str(pushed.ref), dst])
    out = capsys.readouterr().out.strip()
    assert code == 0
    parse_digest(out)
    assert resolve_digest(parse_reference(dst)) == out
    assert lazy_prefetch(parse_reference(dst)) == (mt.OCI_LAYER_GZIP, ["bin/tool"])

    zdst = f"{registry.host}/{repo_name}:zstd"
    assert main(["convert", "--format", "zstd:chunked", str(pushed.ref), zdst]) == 0
    out = capsys.readouterr().out.strip()
    assert resolve_digest(parse_reference(zdst)) == out
    assert lazy_prefetch(parse_reference(zdst)) == (mt.OCI_LAYER_ZSTD, None)


def test_missing_source_exits_125_naming_it(registry: RegistryServer, repo_name: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    src = f"{registry.host}/{repo_name}:absent"
    code = main(["convert", src, f"{registry.host}/{repo_name}:dst"])
    err = capsys.readouterr().err
    assert code == EXIT_SNAPFS_ERROR
    assert len(err.strip().splitlines()) == 1
    assert repo_name in err and "not found" in err


def test_missing_prioritize_file_exits_125(registry: RegistryServer, repo_name: str,
                                           tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.txt"
    code = main(["convert", "--prioritize", str(missing), f"{registry.host}/{repo_name}",
                 f"{registry.host}/{repo_name}:dst"])
    err = capsys.readouterr().err
    assert code == EXIT_SNAPFS_ERROR and str(missing) in err


def test_bad_reference_exits_125(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert", "127.0.0.1:1/Bad:tag", "127.0.0.1:1/x:y"]) == EXIT_SNAPFS_ERROR
    assert "invalid reference" in capsys.readouterr().err


def test_unknown_format_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["convert", "--format", "squashfs", "a", "b"])
    assert exc.value.code == 2
    assert "estargz" in capsys.readouterr().err
