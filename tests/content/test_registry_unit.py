"""Registry client logic with in-memory transports: ranges, errors, platforms, retries."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from content.descriptor import Platform
from content.digest import digest_bytes
from content.errors import (
    InvalidArgument,
    NotFound,
    Unauthorized,
    Unavailable,
)
from content.mediatypes import OCI_INDEX, OCI_MANIFEST
from content.reference import parse_reference
from content.registry import open_registry
from content.registry_manifests import select_platform
from content.registry_ranges import (
    multipart_boundary,
    parse_byteranges,
    parse_content_range,
    range_header,
    slice_parts,
)
from content.registry_transport import http_error


def test_multipart_byteranges_parse_by_content_range_lengths() -> None:
    # the second part's data contains the boundary itself
    body = (b"\r\n--XB\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Range: bytes 0-3/100\r\n\r\nabcd\r\n"
            b"--XB\r\nContent-Range: bytes 50-56/100\r\n\r\n--XB\r\n!\r\n--XB--\r\n")
    parts = parse_byteranges(body, "XB")
    assert parts == [(0, b"abcd"), (50, b"--XB\r\n!")]
    assert slice_parts(parts, 1, 2) == b"bc"
    assert slice_parts(parts, 3, 2) is None
    assert multipart_boundary('multipart/byteranges; boundary="XB"') == "XB"
    assert multipart_boundary("application/octet-stream") is None
    assert range_header([(0, 10), (100, 1)]) == "bytes=0-9,100-100"
    assert parse_content_range("bytes 5-9/*") == (5, 9, None)
    with pytest.raises(InvalidArgument):
        parse_content_range("bytes 9-5/10")
    with pytest.raises(InvalidArgument, match="only 2 bytes"):
        parse_byteranges(b"--B\r\nContent-Range: bytes 0-9/10\r\n\r\nab", "B")


@pytest.mark.parametrize(("status", "error"), [
    (404, NotFound), (401, Unauthorized), (403, Unauthorized), (500, Unavailable),
    (503, Unavailable), (429, Unavailable), (400, InvalidArgument), (416, InvalidArgument)])
def test_one_table_maps_http_to_content_errors(status: int, error: type[Exception]) -> None:
    exc = http_error(status, "h:1", "blob sha256:ab12… in a/b")
    assert type(exc) is error
    assert str(exc).startswith("registry h:1: blob sha256:ab12… in a/b")


def entry(digest: str, arch: str, variant: str = "", os: str = "linux") -> dict[str, object]:
    plat = {"os": os, "architecture": arch, **({"variant": variant} if variant else {})}
    return {"mediaType": OCI_MANIFEST, "digest": "sha256:" + digest * 64, "size": 1,
            "platform": plat}


def test_platform_selection_prefers_exact_variant() -> None:
    index = {"manifests": [entry("a", "arm", "v6"), entry("b", "arm64"), entry("c", "arm64", "v8"),
                           entry("d", "amd64"), entry("e", "amd64", os="windows"),
                           {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "f" * 64,
                            "size": 1}]}

    def pick(p: Platform) -> str:
        return str(select_platform(index, p, "x").digest)[7]

    assert pick(Platform("linux", "arm64", "v8")) == "c"
    assert pick(Platform("linux", "arm64")) == "b"
    assert pick(Platform("linux", "amd64")) == "d"
    assert pick(Platform("windows", "amd64")) == "e"
    with pytest.raises(NotFound, match=r"linux/arm/v7.*has linux/arm/v6, linux/arm64"):
        select_platform(index, Platform("linux", "arm", "v7"), "x")


async def test_429_retry_after_then_redirect_without_authorization(tmp_path: Path) -> None:
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {},
                           "layers": []}).encode()
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "storage.test":
            return httpx.Response(200, content=manifest,
                                  headers={"Content-Type": OCI_MANIFEST})
        if len(seen) == 1:
            return httpx.Response(429, headers={"Retry-After": "0"})
        if "authorization" not in request.headers:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        return httpx.Response(307, headers={"Location": "http://storage.test/m?sig=1"})

    creds = {"auths": {"reg.test": {"username": "u", "password": "p"}}}
    config = tmp_path / "config.json"
    config.write_text(json.dumps(creds))
    async with open_registry(transport=httpx.MockTransport(handler), insecure=True,
                             docker_config=config) as reg:
        desc, data = await reg.fetch_manifest(parse_reference("reg.test/a/b:1"), "1")
    assert data == manifest and desc.digest == digest_bytes(manifest)
    assert desc.media_type == OCI_MANIFEST
    assert [r.url.host for r in seen] == ["reg.test"] * 3 + ["storage.test"]
    assert "authorization" in seen[2].headers
    assert "authorization" not in seen[3].headers
    assert seen[3].headers["accept"].count("application/vnd") == 4


async def test_index_media_type_from_body_when_content_type_is_generic() -> None:
    index = json.dumps({"schemaVersion": 2, "manifests": []}).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=index, headers={"Content-Type": "application/json"})

    async with open_registry(transport=httpx.MockTransport(handler)) as reg:
        desc, _ = await reg.fetch_manifest(parse_reference("localhost:1/x"), "latest")
        assert desc.media_type == OCI_INDEX
        with pytest.raises(NotFound, match="no manifest for platform"):
            await reg.resolve("localhost:1/x")
