"""``snapfs profile show|push|rm IMAGE`` with the real CLI (embedded: the profile recorded by
``snapfs run`` is stored when the command ends), registry, FUSE and runc; remote removal on a
registry that deletes and on one that refuses to."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import trio

from content.profiledoc import ARTIFACT_TYPE
from content.registry import open_registry
from tests.fixtures.images import ImageFactory
from tests.fixtures.registry import RegistryServer
from tests.snapfs import test_cli_run
from tests.snapfs.test_cli_run import EXIT_SNAPFS_ERROR, SNAPFS, Result, SnapfsCli
from tests.snapfs.test_profile_publish import COMMAND, READ, push_estargz

embedded_cli = test_cli_run.embedded_cli
short_dir = test_cli_run.short_dir


async def profile(cli: SnapfsCli, action: str, *args: str) -> Result:
    """``snapfs profile ACTION`` on the CLI's root (its flags follow the action)."""
    with trio.fail_after(60):
        proc = await trio.run_process(
            [str(SNAPFS), "profile", action, "--root", str(cli.root), "--state",
             str(cli.state), "--address", str(cli.address), *args], check=False,
            stdin=subprocess.DEVNULL, capture_stdout=True, capture_stderr=True)
    return Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


async def ok(cli: SnapfsCli, action: str, *args: str) -> str:
    res = await profile(cli, action, *args)
    assert res.status == 0, f"snapfs profile {action} {args}: {res.status}\n{res.stderr}"
    return res.stdout


async def _record(cli: SnapfsCli, ref: str) -> None:
    out = await cli.ok("run", "--rm", "-q", ref, *COMMAND)
    assert out == "done\n"


async def test_show_push_and_rm(embedded_cli: SnapfsCli, registry: RegistryServer,
                                repo_name: str, image_factory: ImageFactory,
                                busybox_tree: Path) -> None:
    ref = str(await push_estargz(image_factory, registry, repo_name, busybox_tree))
    res = await profile(embedded_cli, "push", ref)
    assert res.status == EXIT_SNAPFS_ERROR and "no local profile" in res.stderr, res.stderr
    await _record(embedded_cli, ref)  # shorter than record_seconds: stored at exit

    text = await ok(embedded_cli, "show", ref)
    lines = text.splitlines()
    assert lines[0].startswith(f"profile of {ref} (manifest sha256:")
    assert ", local: " in lines[0] and lines[0].endswith(".json")
    assert " file(s) in 2 layer(s)" in lines[1]
    layer_lines = [n for n, line in enumerate(lines) if line.startswith("layer sha256:")]
    assert len(layer_lines) == 2
    app_part = [line.split() for line in lines[layer_lines[1] + 1:]]
    assert [path for _, path in app_part if path.startswith("app/")] == [
        f"app/f{i}" for i in READ]
    numbers = [int(n) for n, _ in app_part]
    assert numbers == sorted(numbers)  # the global read order, per layer
    local = json.loads(await ok(embedded_cli, "show", "--json", ref))
    assert local["source"] == "local"

    pushed = (await ok(embedded_cli, "push", ref)).split()
    assert pushed[0] == "pushed"
    remote = json.loads(await ok(embedded_cli, "show", "--remote", "--json", ref))
    assert remote == {**remote, "source": "registry", "location": pushed[1]}
    assert remote["profile"]["files"] == local["profile"]["files"]
    again = (await ok(embedded_cli, "push", ref)).split()
    assert again[:2] == pushed[:2]  # the same profile: the same artifact, listed once

    assert (await ok(embedded_cli, "rm", ref)).endswith(": removed\n")
    res = await profile(embedded_cli, "show", "--local", ref)
    assert res.status == EXIT_SNAPFS_ERROR and "no local profile" in res.stderr
    auto = json.loads(await ok(embedded_cli, "show", "--json", ref))
    assert auto["source"] == "registry"  # none here any more: the published one

    out = await ok(embedded_cli, "rm", "--remote", ref)
    assert out.splitlines()[1:] == [f"deleted {pushed[1]}"]
    assert out.splitlines()[0].endswith(": none")  # removed before
    res = await profile(embedded_cli, "show", ref)
    assert res.status == EXIT_SNAPFS_ERROR and "no profile recorded here or published" in \
        res.stderr, res.stderr


async def test_rm_remote_on_a_registry_that_refuses_deletion(
        embedded_cli: SnapfsCli, registry_factory: object, repo_name: str,
        image_factory: ImageFactory, busybox_tree: Path) -> None:
    assert callable(registry_factory)
    strict: RegistryServer = registry_factory(delete=False)
    ref = await push_estargz(image_factory, strict, repo_name, busybox_tree)
    await _record(embedded_cli, str(ref))
    artifact = (await ok(embedded_cli, "push", str(ref))).split()[1]
    res = await profile(embedded_cli, "rm", "--remote", str(ref))
    assert res.status == 0, res.stderr
    assert f"not deleted {artifact}: the registry refuses to delete it; taken off" in res.stdout
    async with open_registry() as reg:
        subject = (await reg.resolve(ref)).descriptor.digest
        assert await reg.referrers(ref, subject, ARTIFACT_TYPE) == []
        _, kept = await reg.fetch_manifest(ref, artifact)  # still there, by digest only
    assert json.loads(kept)["artifactType"] == ARTIFACT_TYPE
