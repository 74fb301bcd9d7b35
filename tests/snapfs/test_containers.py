"""snapfs.app.containers: records, references and lookups (fast, no runc or registry)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest

from content.descriptor import Descriptor
from content.digest import digest_bytes
from content.errors import InvalidArgument, NotFound
from content.mediatypes import OCI_MANIFEST
from content.reference import parse_reference
from runtime.bundle import Owner, process_start_time
from snapfs.app.containers import ContainerRecord, find_container, list_containers
from snapfs.app.engine import Engine
from snapfs.app.imageops import local_image, parse_image_ref
from snapfs.app.images import ImageRecord, ImageStore
from snapfs.app.records import RECORD


@dataclass
class FakeEngine:
    containers_dir: Path
    images: ImageStore


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with ImageStore(tmp_path / "root") as images:
        yield cast(Engine, FakeEngine(tmp_path / "containers", images))


def me() -> Owner:
    return Owner(os.getpid(), process_start_time(os.getpid()))


def record(cid: str, name: str, *, owner: Owner | None = None, created: float = 1.0,
           finished: float | None = None, exit_code: int | None = None) -> ContainerRecord:
    return ContainerRecord(cid, name, "127.0.0.1:5000/app:latest", f"snapfs-run-{cid}", False,
                           owner or me(), created, finished, exit_code)


def save(engine: Engine, rec: ContainerRecord) -> None:
    cdir = engine.containers_dir / rec.id
    cdir.mkdir(parents=True)
    (cdir / RECORD).write_text(json.dumps(rec.to_json()))


def test_record_round_trips_through_json() -> None:
    for rec in (record("a1", "web"), record("b2", "job", finished=5.0, exit_code=3)):
        assert ContainerRecord.from_json(json.loads(json.dumps(rec.to_json()))) == rec


def test_status_running_exited_dead() -> None:
    assert record("a", "a").status == "running"
    assert record("a", "a", finished=2.0, exit_code=0).status == "exited"
    # A pid that is ours but with another start time is a reused pid: its owner is gone.
    assert record("a", "a", owner=Owner(os.getpid(), -1)).status == "dead"


@pytest.mark.parametrize("text", ["UPPER/case", "Foo/bar:1", "app:bad tag", "", "a@sha256:xyz"])
def test_bad_references_are_invalid(text: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid reference format"):
        parse_image_ref(text)


def test_good_references_parse() -> None:
    assert str(parse_image_ref("127.0.0.1:5000/app")) == "127.0.0.1:5000/app:latest"
    assert str(parse_image_ref("busybox")) == "docker.io/library/busybox:latest"
    assert str(parse_image_ref("Registry.Example.com/app:1")).endswith("/app:1")


def test_local_image_by_name_and_by_digest(engine: Engine) -> None:
    manifest = digest_bytes(b"manifest")
    engine.images.put(ImageRecord("127.0.0.1:5000/app:1", Descriptor(OCI_MANIFEST, manifest, 8),
                                  digest_bytes(b"config"), (digest_bytes(b"layer"),)))
    by_name = local_image(engine, parse_reference("127.0.0.1:5000/app:1"))
    assert by_name is not None and by_name.target.digest == manifest
    pinned = local_image(engine, parse_reference(f"127.0.0.1:5000/app@{manifest}"))
    assert pinned == by_name
    # The same digest in another repository is not this image (it may not be there).
    assert local_image(engine, parse_reference(f"127.0.0.1:5000/other@{manifest}")) is None
    assert local_image(engine, parse_reference("127.0.0.1:5000/app:2")) is None


def test_containers_are_found_by_name_id_or_prefix(engine: Engine) -> None:
    save(engine, record("abc123", "web", created=2.0))
    save(engine, record("abd456", "job", created=1.0))
    (engine.containers_dir / "junk").mkdir()  # no record: ignored
    assert [r.name for r in list_containers(engine)] == ["job", "web"]  # oldest first
    assert find_container(engine, "web").id == "abc123"
    assert find_container(engine, "abd456").name == "job"
    assert find_container(engine, "abc").name == "web"
    with pytest.raises(InvalidArgument, match="matches 2 containers"):
        find_container(engine, "ab")
    with pytest.raises(NotFound, match="no such container"):
        find_container(engine, "zzz")
