"""run_container against the real runc, on a busybox rootfs (root only)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio

from runtime.bundle import create_bundle, process_start_time, read_owner, remove_bundle
from runtime.container import cleanup_stale, run_container
from runtime.errors import AlreadyExists, FailedPrecondition, Internal, InvalidArgument, NotFound
from runtime.runc import Runc, runc_error
from runtime.spec import RunOptions, build_spec, parse_volume
from tests.fixtures.realenv import need_binary, need_root

pytestmark = pytest.mark.real


@pytest.fixture(autouse=True)
def _need_runc(request: pytest.FixtureRequest) -> None:
    if "runc_runner" in request.fixturenames:
        need_root("root, to run runc containers")
        need_binary("runc")


def _new_id() -> str:
    return "snapfs-test-" + uuid.uuid4().hex[:8]


def _bundle(tmp_path: Path, rootfs: Path, opts: RunOptions, cid: str) -> Path:
    spec = build_spec({"Cmd": ["sh"]}, opts, rootfs)
    return create_bundle(tmp_path / "bundles" / cid, spec)


async def _run(
    runc: Runc, tmp_path: Path, rootfs: Path, opts: RunOptions, cid: str | None = None
) -> tuple[int, str]:
    cid = cid or _new_id()
    bundle = _bundle(tmp_path, rootfs, opts, cid)
    out = tmp_path / f"{cid}.out"
    with open(out, "wb") as f, open(os.devnull, "rb") as devnull:
        status = await run_container(runc, cid, bundle, tty=opts.tty, stdin=devnull.fileno(),
                                     stdout=f.fileno(), stderr=f.fileno())  # fmt: skip
    assert not bundle.exists()
    return status, out.read_text()


def sh(script: str, **kw: Any) -> RunOptions:
    return RunOptions(args=("sh", "-c", script), **kw)


async def test_exit_status(runc_runner: Runc, tmp_path: Path, busybox_rootfs: Path) -> None:
    assert await _run(runc_runner, tmp_path, busybox_rootfs, sh("exit 7")) == (7, "")
    assert await runc_runner.list() == []


async def test_env_workdir_user(runc_runner: Runc, tmp_path: Path, busybox_rootfs: Path) -> None:
    opts = sh("env; pwd; id", env=("GREETING=hello",), workdir="/tmp", user="app")
    status, out = await _run(runc_runner, tmp_path, busybox_rootfs, opts)
    lines = out.splitlines()
    assert status == 0, out
    assert "GREETING=hello" in lines
    assert any(ln.startswith("PATH=/usr/local/sbin") for ln in lines)
    assert "/tmp" in lines
    ids, _, groups = lines[-1].partition(" groups=")
    assert ids == "uid=1000(app) gid=1000(app)"
    assert sorted(groups.split(",")) == ["1000(app)", "50(staff)"]


async def test_stdout_and_stderr_pass_through(
    runc_runner: Runc, tmp_path: Path, busybox_rootfs: Path
) -> None:
    status, out = await _run(runc_runner, tmp_path, busybox_rootfs, sh("echo out; echo err >&2"))
    assert (status, sorted(out.splitlines())) == (0, ["err", "out"])


async def _wait_for_output(path: Path, text: str) -> None:
    while text not in (path.read_text() if path.exists() else ""):
        await trio.sleep(0.02)


async def test_sigkill_is_137(runc_runner: Runc, tmp_path: Path, busybox_rootfs: Path) -> None:
    cid = _new_id()
    out = tmp_path / f"{cid}.out"
    async with trio.open_nursery() as nursery:
        async def killer() -> None:
            await _wait_for_output(out, "ready")
            await runc_runner.kill(cid, signal.SIGKILL)

        nursery.start_soon(killer)
        status, _ = await _run(runc_runner, tmp_path, busybox_rootfs,
                               sh("echo ready; exec sleep 100"), cid)  # fmt: skip
    assert status == 128 + signal.SIGKILL


async def test_signals_are_forwarded(
    runc_runner: Runc, tmp_path: Path, busybox_rootfs: Path
) -> None:
    cid = _new_id()
    out = tmp_path / f"{cid}.out"
    async with trio.open_nursery() as nursery:
        async def send_sigterm_to_ourselves() -> None:
            await _wait_for_output(out, "ready")
            os.kill(os.getpid(), signal.SIGTERM)

        nursery.start_soon(send_sigterm_to_ourselves)
        script = "trap 'echo got-term; exit 3' TERM; echo ready; sleep 100 & wait"
        status, text = await _run(runc_runner, tmp_path, busybox_rootfs, sh(script), cid)
    assert (status, text.split()) == (3, ["ready", "got-term"])


async def test_cancel_leaves_nothing_behind(
    runc_runner: Runc, tmp_path: Path, busybox_rootfs: Path
) -> None:
    cid = _new_id()
    out = tmp_path / f"{cid}.out"
    bundle = _bundle(tmp_path, busybox_rootfs, sh("echo ready; exec sleep 100"), cid)
    async with trio.open_nursery() as nursery:
        async def runner() -> None:
            with open(out, "wb") as f:
                await run_container(runc_runner, cid, bundle, tty=False, stdout=f.fileno())

        nursery.start_soon(runner)
        await _wait_for_output(out, "ready")
        assert [c["id"] for c in await runc_runner.list()] == [cid]
        nursery.cancel_scope.cancel()
    assert await runc_runner.list() == []
    assert not bundle.exists()


async def test_failed_create_cleans_up(
    runc_runner: Runc, tmp_path: Path, busybox_rootfs: Path
) -> None:
    cid = _new_id()
    bundle = _bundle(tmp_path, busybox_rootfs, RunOptions(args=("/no/such/binary",)), cid)
    with pytest.raises(Internal, match=f"^container {cid}: runc create failed: ") as exc:
        await run_container(runc_runner, cid, bundle, tty=False)
    assert "no such file" in str(exc.value).lower()
    assert await runc_runner.list() == []
    assert not bundle.exists()


async def test_volume_bind_mount(runc_runner: Runc, tmp_path: Path, busybox_rootfs: Path) -> None:
    host = tmp_path / "host-dir"
    host.mkdir()
    (host / "greeting").write_text("from the host\n")
    opts = sh("cat /data/greeting; echo written > /data/back",
              volumes=(parse_volume(f"{host}:/data"),))  # fmt: skip
    assert await _run(runc_runner, tmp_path, busybox_rootfs, opts) == (0, "from the host\n")
    assert (host / "back").read_text() == "written\n"
    ro = sh("touch /data/nope", volumes=(parse_volume(f"{host}:/data:ro"),))
    status, out = await _run(runc_runner, tmp_path, busybox_rootfs, ro)
    assert status != 0 and "Read-only file system" in out
    assert not (host / "nope").exists()


async def test_read_only_rootfs(runc_runner: Runc, tmp_path: Path, busybox_rootfs: Path) -> None:
    status, out = await _run(runc_runner, tmp_path, busybox_rootfs,
                             sh("touch /x", read_only=True))  # fmt: skip
    assert status != 0 and "Read-only file system" in out
    assert not (busybox_rootfs / "x").exists()
    assert await _run(runc_runner, tmp_path, busybox_rootfs, sh("touch /x")) == (0, "")
    assert (busybox_rootfs / "x").exists()


async def test_tty_through_console_socket(
    runc_runner: Runc, tmp_path: Path, busybox_rootfs: Path
) -> None:
    status, out = await _run(runc_runner, tmp_path, busybox_rootfs,
                             sh("tty; echo $TERM; exit 5", tty=True))  # fmt: skip
    assert status == 5
    assert out.replace("\r\n", "\n").splitlines() == ["/dev/pts/0", "xterm"]


async def test_runc_errors_name_the_container(runc_runner: Runc) -> None:
    with pytest.raises(NotFound, match=r"^container ghost: runc state failed: .*does not exist"):
        await runc_runner.state("ghost")


async def test_cleanup_stale(runc_runner: Runc, tmp_path: Path, busybox_rootfs: Path) -> None:
    bundles = tmp_path / "bundles"
    # A container whose owner is gone: a bundle claiming a pid that cannot exist.
    dead = _new_id()
    bundle = _bundle(tmp_path, busybox_rootfs, sh("exec sleep 100"), dead)
    await runc_runner.create(dead, bundle)
    pid = int((await runc_runner.state(dead))["pid"])
    (bundle / "owner.json").write_text('{"pid": 999999999, "start": 1}')
    live = _new_id()
    _bundle(tmp_path, busybox_rootfs, sh("true"), live)
    # Bundles being built (a concurrent `snapfs run`): the live one's is left alone, even
    # before it holds an owner record; a killed creator's goes.
    building = bundles / f".new-{os.getpid()}-{process_start_time(os.getpid())}-{_new_id()}"
    building.mkdir()
    abandoned = bundles / f".new-999999999-1-{_new_id()}"
    abandoned.mkdir()
    assert await cleanup_stale(runc_runner, bundles) == sorted([dead, abandoned.name])
    with contextlib.suppress(ChildProcessError):  # reap it if it was reparented to us
        os.waitpid(pid, 0)
    assert await runc_runner.list() == []
    assert sorted(p.name for p in bundles.iterdir()) == sorted([live, building.name])


def test_bad_user_fails_before_runc(busybox_rootfs: Path) -> None:
    with pytest.raises(InvalidArgument, match="unable to find user ghost"):
        build_spec({"Cmd": ["sh"]}, RunOptions(user="ghost"), busybox_rootfs)


async def test_tty_copies_our_input_to_the_container(
    runc_runner: Runc, tmp_path: Path, busybox_rootfs: Path
) -> None:
    cid = _new_id()
    bundle = _bundle(tmp_path, busybox_rootfs, sh("read x; echo got-$x", tty=True), cid)
    r, w = os.pipe()
    os.write(w, b"hello\n")
    out = tmp_path / "out"
    try:
        with open(out, "wb") as f:
            status = await run_container(runc_runner, cid, bundle, tty=True, stdin=r,
                                         stdout=f.fileno())  # fmt: skip
    finally:
        os.close(r)
        os.close(w)
    assert status == 0
    assert "got-hello" in out.read_text().splitlines()[-1]


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("container does not exist", NotFound),
        ("container with id exists: c1", AlreadyExists),
        ("cannot start a container that has stopped", FailedPrecondition),
        ("container not running", FailedPrecondition),
        ("runc create failed: unable to start container process: exec: boom", Internal),
    ],
)
def test_runc_error_table(message: str, kind: type[Exception]) -> None:
    err = runc_error("c1", "create", message)
    assert type(err) is kind
    cause = message.removeprefix("runc create failed: ")
    assert str(err) == f"container c1: runc create failed: {cause}"


def test_bundle_round_trip(tmp_path: Path) -> None:
    spec = {"root": {"path": "/some/rootfs"}, "process": {"args": ["sh"]}}
    bundle = create_bundle(tmp_path / "b", spec)
    assert json.loads((bundle / "config.json").read_text()) == spec
    owner = read_owner(bundle)
    assert owner is not None and owner.pid == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temp dir left
    with pytest.raises(AlreadyExists, match="already exists"):
        create_bundle(tmp_path / "b", spec)
    remove_bundle(bundle)
    assert not bundle.exists()
    remove_bundle(bundle)  # already gone: fine
    with pytest.raises(InvalidArgument, match=r"root\.path must be absolute"):
        create_bundle(tmp_path / "c", {"root": {"path": "rootfs"}})


async def test_list_retries_a_container_deleted_while_runc_lists(tmp_path: Path) -> None:
    # A stand-in runc (the race itself needs another process deleting at the right moment;
    # tests/snapfs/test_concurrency.py meets it for real): the first list fails as runc does
    # when a state dir vanishes between its readdir and its stat, the second answers.
    calls = tmp_path / "calls"
    fake = tmp_path / "runc"
    fake.write_text(f"""#!/bin/sh
echo x >> {calls}
if [ "$(wc -l < {calls})" -eq 1 ]; then
  echo "stat /run/x/abc: no such file or directory" >&2; exit 1
fi
echo '[{{"id": "c1"}}]'
""")
    fake.chmod(0o755)
    assert [c["id"] for c in await Runc(str(fake), root=tmp_path).list()] == ["c1"]
    assert len(calls.read_text().split()) == 2
    calls.unlink()
    fake.write_text("#!/bin/sh\necho 'some other failure' >&2; exit 1\n")
    with pytest.raises(Internal, match="some other failure"):
        await Runc(str(fake), root=tmp_path).list()
