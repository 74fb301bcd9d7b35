"""TOC parsing: what a hostile layer could put in its TOC is refused, with the cause named."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from content.digest import digest_bytes
from content.errors import InvalidArgument
from content.toc import normalize_name, parse_rfc3339_ns, parse_toc_json

D1 = str(digest_bytes(b"1"))
D2 = str(digest_bytes(b"2"))


def toc(*entries: Any, **top: Any) -> bytes:
    return json.dumps({"version": 1, "entries": list(entries), **top}).encode()


def reg(name: Any = "f", size: Any = 10, offset: int = 100, **kw: Any) -> dict[str, Any]:
    return {"name": name, "type": "reg", "size": size, "offset": offset, "digest": D1, **kw}


def test_valid_toc_is_normalised() -> None:
    t = parse_toc_json(toc(
        {"name": "./", "type": "dir"},
        {"name": "./etc/", "type": "dir", "modtime": "2024-02-03T04:05:06.5+01:00"},
        reg("./etc//f", size=10, chunkSize=4, chunkDigest=D1),
        {"name": "etc/f", "type": "chunk", "offset": 150, "chunkOffset": 4, "chunkDigest": D2},
        {"name": "etc/link", "type": "hardlink", "linkName": "./etc/f"},
        {"name": "etc/sym", "type": "symlink", "linkName": "/abs/target"},
        {"name": "dev/x", "type": "block", "devMajor": 8, "devMinor": 1,
         "xattrs": {"user.a": "aGk="}},
    ), "layer L", limit=1000)
    names = [(e.name, e.type) for e in t.entries]
    assert names == [("", "dir"), ("etc", "dir"), ("etc/f", "reg"), ("etc/f", "chunk"),
                     ("etc/link", "hardlink"), ("etc/sym", "symlink"), ("dev/x", "block")]
    assert t.entries[1].mtime_ns == parse_rfc3339_ns("2024-02-03T03:05:06.5Z", "x")
    # the last chunk's implicit "to the end" size is made explicit
    assert [e.chunk_size for e in t.entries[2:4]] == [4, 6]
    assert t.entries[4].linkname == "etc/f"
    assert t.entries[5].linkname == "/abs/target"  # symlinks are shown, never followed here
    assert t.entries[6].xattrs == {"user.a": b"hi"}


def test_rfc3339() -> None:
    assert parse_rfc3339_ns("1970-01-01T00:00:01Z", "x") == 10**9
    assert parse_rfc3339_ns("1970-01-01T00:00:01.000000002Z", "x") == 10**9 + 2
    with pytest.raises(InvalidArgument, match="modtime"):
        parse_rfc3339_ns("yesterday", "x")


@pytest.mark.parametrize(("name", "ok"), [
    ("a/b", "a/b"), ("./a/./b/", "a/b"), ("/a", "a"), ("//", ""),
    ("../a", None), ("a/../../b", None), ("a/..", None), ("a\x00b", None),
])
def test_normalize_name(name: str, ok: str | None) -> None:
    if ok is None:
        with pytest.raises(InvalidArgument):
            normalize_name(name, "x")
    else:
        assert normalize_name(name, "x") == ok


@pytest.mark.parametrize(("data", "cause"), [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b"[" * 100000, "not valid JSON"),
    (json.dumps({"version": 2, "entries": []}).encode(), "unsupported TOC version 2"),
    (json.dumps({"version": 1}).encode(), "no 'entries' list"),
    (toc("x"), "entry 0: not a JSON object"),
    (toc(reg("../../etc/shadow")), "escapes the layer root"),
    (toc(reg("a/../../x")), "escapes the layer root"),
    (toc({"name": "x", "type": "socket"}), "unknown type 'socket'"),
    (toc(reg(offset=5000)), "past the payload end 1000"),
    (toc(reg(offset=0)), "invalid blob offset 0"),
    (toc(reg(size=-1)), "'size' must be an integer"),
    (toc(reg(size=1.5)), "'size' must be an integer"),
    (toc(reg(uid=True)), "'uid' must be an integer"),
    (toc(reg(digest="md5:abc")), "field 'digest'"),
    (toc(reg(chunkDigest="sha256:xyz")), "field 'chunkDigest'"),
    (toc(reg(name=7)), "field 'name' must be a string"),
    (toc(reg(xattrs={"user.a": "***"})), "not base64"),
    (toc(reg(xattrs=[1])), "'xattrs' must be an object"),
    (toc(reg(modtime="noon")), "not RFC 3339"),
    (toc(reg(endOffset=50)), "endOffset 50"),
    (toc(reg(size=10, chunkSize=4),
         {"name": "f", "type": "chunk", "offset": 150, "chunkOffset": 5}),
     "chunk 1 starts at 5, expected 4"),
    (toc(reg(size=10, chunkSize=4),
         {"name": "f", "type": "chunk", "offset": 150, "chunkOffset": 4, "chunkSize": 3}),
     "chunks cover 7 of 10"),
    (toc(reg(size=10, chunkSize=4),
         {"name": "f", "type": "chunk", "offset": 150, "chunkOffset": 4, "chunkSize": 9}),
     "invalid size 9"),
    (toc(reg(size=10, chunkSize=4),
         {"name": "f", "type": "chunk", "offset": 50, "chunkOffset": 4}),
     "invalid blob offset 50"),
    (toc(reg(size=10, chunkSize=4),
         {"name": "other", "type": "chunk", "offset": 150, "chunkOffset": 4}),
     "chunk of 'other' follows file 'f'"),
    (toc({"name": "d", "type": "dir"}, {"name": "d", "type": "chunk", "offset": 150}),
     "chunk without a regular file"),
    (toc(reg(size=0, offset=0), {"name": "f", "type": "chunk", "offset": 150}),
     "empty file has chunk entries"),
    (toc({"name": "h", "type": "hardlink", "linkName": "missing"}), "hardlink target 'missing'"),
    (toc({"name": "d", "type": "dir"}, {"name": "h", "type": "hardlink", "linkName": "d"}),
     "hardlink target 'd'"),
    (toc({"name": "h", "type": "hardlink", "linkName": "../x"}), "escapes the layer root"),
    (toc({"name": "s", "type": "symlink"}), "symlink without linkName"),
    (toc({"name": "", "type": "reg"}), "only a directory may be the layer root"),
    (toc(reg(), tarSplitDigest="nope"), "tarSplitDigest"),
])
def test_malformed_toc_is_refused_with_the_cause(data: bytes, cause: str) -> None:
    if any(c in cause for c in FILE_LEVEL):
        # One regular file whose chunks do not fit: the TOC parses, only that file is
        # marked malformed (listed with its size, unreadable), with the cause.
        t = parse_toc_json(data, "layer L", limit=1000)
        assert re.search("^layer L: file 'f': .*" + re.escape(cause), t.malformed["f"])
        assert [e.name for e in t.entries if e.type == "reg"] == ["f"]
        assert not [e for e in t.entries if e.type == "chunk"]
        return
    with pytest.raises(InvalidArgument, match="^layer L: .*" + re.escape(cause)):
        parse_toc_json(data, "layer L", limit=1000)



def test_a_toc_with_too_many_entries_is_refused_naming_the_count() -> None:
    entries = [{"name": f"d{i}", "type": "dir", "mode": 0o755} for i in range(11)]
    doc = json.dumps({"version": 1, "entries": entries}).encode()
    assert len(parse_toc_json(doc, "layer x", max_entries=11).entries) == 11
    with pytest.raises(InvalidArgument, match="layer x: TOC has 11 entries, more than the 10"):
        parse_toc_json(doc, "layer x", max_entries=10)


# Causes that concern one regular file's chunks (each costs only that file).
FILE_LEVEL = ("past the payload end", "invalid blob offset", "endOffset", "starts at",
              "chunks cover", "invalid size", "empty file has chunk entries")

