"""snapfs.app.pull and ``snapfs pull``: pure helpers, progress output, and the real command."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from content.descriptor import Descriptor
from content.digest import digest_bytes
from content.errors import AlreadyExists, InvalidArgument, NotFound
from content.image import make_image, make_layer, parse_config, parse_manifest
from content.mediatypes import OCI_LAYER_GZIP
from snapfs.app.progress import PullProgress
from snapfs.app.pull import PREPARE_ATTEMPTS, Puller, apply_target, chain_ids, check_layers
from snapfs.snapshot.types import Info, Kind, Mount
from tests.fixtures.images import ImageFactory
from tests.fixtures.registry import RegistryServer
from tests.snapfs import test_cli_run
from tests.snapfs.test_cli_run import SnapfsCli, push_app_image

# Fixtures shared with test_cli_run (a per-test daemon or embedded snapfs, its dirs).
snapfs_cli = test_cli_run.snapfs_cli
short_dir = test_cli_run.short_dir


def test_chain_ids_follow_the_image_spec() -> None:
    a, b = digest_bytes(b"a"), digest_bytes(b"b")
    assert chain_ids([]) == []
    assert chain_ids([a]) == [a]
    assert chain_ids([a, b]) == [a, digest_bytes(f"{a} {b}".encode())]


def test_check_layers_rejects_a_count_mismatch() -> None:
    one = make_image([make_layer(b"x" * 1024)])
    two = make_image([make_layer(b"x" * 1024), make_layer(b"y" * 1024)])
    with pytest.raises(InvalidArgument, match="1 layers but config has 2 diff_ids"):
        check_layers(parse_manifest(one.manifest), parse_config(two.config), "img")
    check_layers(parse_manifest(two.manifest), parse_config(two.config), "img")


def test_apply_target_for_each_mount_shape() -> None:
    assert apply_target([Mount("bind", "/s/1/fs", options=("rw", "rbind"))]) == (Path("/s/1/fs"),
                                                                                  [])
    overlay = Mount("overlay", "overlay",
                    options=("index=off", "workdir=/s/3/work", "upperdir=/s/3/fs",
                             "lowerdir=/s/2/fs:/s/1/fs"))
    assert apply_target([overlay]) == (Path("/s/3/fs"), [Path("/s/2/fs"), Path("/s/1/fs")])
    with pytest.raises(InvalidArgument):
        apply_target([Mount("overlay", "overlay", options=("lowerdir=/a:/b",))])


def _desc(data: bytes) -> Descriptor:
    return Descriptor(OCI_LAYER_GZIP, digest_bytes(data), 2048)


def test_progress_in_a_pipe_is_plain_lines() -> None:
    out = io.StringIO()
    progress = PullProgress(out, tty=False)
    a, b = _desc(b"a"), _desc(b"b")
    progress.image("reg/app:1", [a, b])
    progress.layer(a, "exists")
    progress.layer(b, "downloading")
    progress.layer(b, "downloaded", 2048)
    progress.layer(b, "done", 2048)
    progress.finish()
    lines = out.getvalue().splitlines()
    assert lines[0] == "pulling reg/app:1 (2 layers, 4.0 KiB)"
    assert lines[1].split() == [f"{a.digest.short()}:", "exists", "2.0", "KiB"]
    assert lines[3].startswith(f"{b.digest.short()}: downloaded") and lines[3].endswith("/s)")
    assert lines[-1].startswith("pulled reg/app:1: 2/2 layers, 2.0 KiB fetched")
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_progress_on_a_terminal_rewrites_one_line() -> None:
    out = io.StringIO()
    progress = PullProgress(out, tty=True)
    a = _desc(b"a")
    progress.image("reg/app:1", [a])
    progress.layer(a, "downloaded", 2048)
    progress.layer(a, "done", 2048)
    progress.finish()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert "layers 1/1" in text and "2.0 KiB" in text and "/s" in text


def test_quiet_progress_prints_nothing() -> None:
    out = io.StringIO()
    progress = PullProgress(out, quiet=True)
    progress.image("reg/app:1", [_desc(b"a")])
    progress.layer(_desc(b"a"), "done", 1)
    progress.finish()
    assert out.getvalue() == ""


# -- the command -------------------------------------------------------------------------------


async def test_pull_in_a_pipe_and_as_json(snapfs_cli: SnapfsCli, registry: RegistryServer,
                                          repo_name: str, image_factory: ImageFactory,
                                          busybox_tree: Path) -> None:
    img = await push_app_image(image_factory, registry, repo_name, busybox_tree)
    res = await snapfs_cli("pull", str(img.ref))
    assert res.status == 0, res.stderr
    assert res.stdout == f"{img.ref}: {img.image.digest} (0 lazy, 2 native, 0 already present)\n"
    lines = res.stderr.splitlines()
    assert lines[0].startswith(f"pulling {img.ref} (2 layers, ")
    for layer in img.image.layers:
        assert f"{layer.digest.short()}: done" in res.stderr
    assert lines[-1].startswith(f"pulled {img.ref}: 2/2 layers")
    assert not any("\r" in line for line in lines)

    res = await snapfs_cli("pull", "--json", str(img.ref))
    assert res.status == 0 and res.stderr == ""
    doc = json.loads(res.stdout)
    assert doc == {"image": str(img.ref), "digest": str(img.image.digest), "layers": 2,
                   "lazy": 0, "native": 0, "existing": 2,
                   "bytes_fetched": doc["bytes_fetched"], "requests": doc["requests"]}
    # Already local: only the manifest and config are asked for again, no layer blob.
    layer_bytes = sum(layer.size for layer in img.image.layers)
    assert doc["bytes_fetched"] < layer_bytes

    images = json.loads(await snapfs_cli.ok("images", "--json"))
    assert [(i["name"], i["target"]["digest"]) for i in images] == [
        (str(img.ref), str(img.image.digest))]


async def test_pull_of_a_missing_tag_fails_in_one_line(snapfs_cli: SnapfsCli,
                                                       registry: RegistryServer,
                                                       repo_name: str) -> None:
    res = await snapfs_cli("pull", f"{registry.host}/{repo_name}:nope")
    assert res.status == 125
    assert res.stderr.startswith("snapfs: ") and res.stderr.count("\n") == 1
    assert "not found" in res.stderr


class VanishingChain:
    """Snapshots whose Prepare answers AlreadyExists and whose chain is not there the first
    ``gone`` times it is Stat()ed (removed in between by another client), then is."""

    def __init__(self, gone: int) -> None:
        self.gone = gone
        self.prepared: list[str] = []

    async def prepare(self, key: str, parent: str = "",
                      labels: Mapping[str, str] | None = None) -> list[Mount]:
        self.prepared.append(key)
        raise AlreadyExists("snapshot (the chain) already exists")

    async def stat(self, key: str) -> Info:
        if self.gone:
            self.gone -= 1
            raise NotFound(f"snapshot {key} not found")
        return Info(name=key, kind=Kind.COMMITTED)


async def test_a_chain_gone_after_already_exists_is_prepared_again_as_containerd_does(
        ) -> None:
    chain = digest_bytes(b"chain")
    for gone, attempts in ((0, 1), (2, 3)):
        snapshots = VanishingChain(gone)
        puller = Puller(None, None, snapshots, None)  # type: ignore[arg-type]
        assert await puller._prepare(chain, "", {}) is None  # committed lazily
        assert len(set(snapshots.prepared)) == attempts  # a new key each time
    snapshots = VanishingChain(3)
    with pytest.raises(NotFound):
        await Puller(None, None, snapshots, None)._prepare(chain, "", {})  # type: ignore[arg-type]
    assert len(snapshots.prepared) == PREPARE_ATTEMPTS
