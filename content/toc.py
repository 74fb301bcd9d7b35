"""The table of contents shared by eStargz and zstd:chunked layers, and its validation.

Both formats carry the same CRFS-style JSON ``{"version": 1, "entries": [...]}``; zstd:chunked
adds ``endOffset`` (where a payload frame ends) and ``chunkType``. A TOC comes from the layer
blob, i.e. from whoever pushed the image, so :func:`parse_toc_json` treats it as hostile: every
name, offset, size and digest is checked before anything is derived from it.

Chunk sizes are normalised on parse: eStargz writes ``chunkSize: 0`` for "to the end of the
file"; after parsing, every ``reg``/``chunk`` entry of a non-empty file has its real size.

Must not do I/O: it parses and validates the bytes it is handed.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from content.digest import Digest, parse_digest
from content.errors import InvalidArgument

ENTRY_TYPES = frozenset({"dir", "reg", "symlink", "hardlink", "char", "block", "fifo", "chunk"})
_MAX_INT = 1 << 63
_MAX_ID = 1 << 32
# Entries per TOC: bounds the daemon's memory per lazy layer (with chunkedtar's
# MAX_TOC_BYTES on the JSON itself); a Debian rootfs has ~10k, big images ~100k.
MAX_TOC_ENTRIES = 1 << 20
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(Z|z|[+-]\d{2}:\d{2})$"
)


@dataclass(frozen=True, slots=True)
class TOCEntry:
    name: str
    type: str
    size: int = 0
    modtime: str = ""
    mtime_ns: int = 0
    linkname: str = ""
    mode: int = 0
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    digest: Digest | None = None
    offset: int = 0
    end_offset: int = 0
    inner_offset: int = 0
    chunk_offset: int = 0
    chunk_size: int = 0
    chunk_digest: Digest | None = None
    chunk_type: str = ""


@dataclass(frozen=True, slots=True)
class TOCLocation:
    """Where a lazy layer keeps its TOC, read from its footer or its annotations.

    ``payload_end`` is where file payloads stop (the TOC's own frame or member starts there);
    every payload offset in the TOC must lie below it.
    """

    format: str  # "estargz" | "zstd:chunked"
    toc_offset: int
    toc_length: int  # compressed bytes to fetch from toc_offset
    toc_uncompressed_length: int  # 0 when the format does not say
    payload_end: int
    footer_size: int


@dataclass(slots=True)
class TOC:
    version: int
    entries: list[TOCEntry]
    tar_split_digest: Digest | None = None
    # Regular files whose chunk entries are malformed, with the reason: each is kept (its
    # reg entry, no chunks) so it is listed, and only it is unreadable.
    malformed: dict[str, str] = field(default_factory=dict)


def normalize_name(name: str, what: str) -> str:
    """``./a//b/`` → ``a/b``; the root is ``""``. Rejects ``..`` and NUL, which could escape."""
    if "\x00" in name:
        raise InvalidArgument(f"{what}: name {name!r} contains NUL")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArgument(f"{what}: name {name!r} escapes the layer root ('..')")
    return "/".join(parts)


def parse_rfc3339_ns(text: str, what: str) -> int:
    """RFC 3339 (as Go writes it, nanoseconds optional) → ns since the epoch."""
    ns = _rfc3339_ns(text)
    if isinstance(ns, str):
        raise InvalidArgument(f"{what}: modtime {text!r} {ns}")
    return ns


@functools.lru_cache(maxsize=4096)
def _rfc3339_ns(text: str) -> int | str:
    """The time, or why it is not one. Cached: the files of a layer mostly share a few
    modification times (a package's install time), and a TOC has thousands of entries."""
    m = _RFC3339.match(text)
    if m is None:
        return "is not RFC 3339"
    y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
    if not (1 <= mo <= 12 and 1 <= d <= 31 and h < 24 and mi < 60 and s <= 60):
        return "is out of range"
    frac = (m.group(7) or "").ljust(9, "0")
    tz = m.group(8)
    offset = 0
    if tz not in ("Z", "z"):
        sign = -1 if tz[0] == "-" else 1
        offset = sign * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
    secs = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)) - offset
    return secs * 1_000_000_000 + int(frac)


def _int(raw: Mapping[str, Any], key: str, what: str, limit: int = _MAX_INT) -> int:
    value = raw.get(key, 0)
    if type(value) is int and 0 <= value < limit:  # the common case first (not bool)
        return value
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
        raise InvalidArgument(f"{what}: field {key!r} must be an integer in [0, {limit}), "
                              f"got {value!r}")
    return value


def _str(raw: Mapping[str, Any], key: str, what: str) -> str:
    value = raw.get(key, "")
    if type(value) is str:
        return value
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"{what}: field {key!r} must be a string, got {value!r}")
    return value


def _digest(raw: Mapping[str, Any], key: str, what: str) -> Digest | None:
    text = _str(raw, key, what)
    if not text:
        return None
    try:
        return parse_digest(text)
    except InvalidArgument as e:
        raise InvalidArgument(f"{what}: field {key!r}: {e}") from None


def _xattrs(raw: Mapping[str, Any], what: str) -> dict[str, bytes]:
    value = raw.get("xattrs") or {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what}: field 'xattrs' must be an object")
    out: dict[str, bytes] = {}
    for k, v in value.items():
        if not isinstance(v, str) or not k or "\x00" in k:
            raise InvalidArgument(f"{what}: xattr {k!r} must be a non-empty name with a "
                                  "base64 string value")
        try:
            out[k] = base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgument(f"{what}: xattr {k!r} value is not base64") from None
    return out


def _entry(raw: Any, index: int, what: str) -> TOCEntry:
    where = f"{what}: TOC entry {index}"
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{where}: not a JSON object")
    name_raw = _str(raw, "name", where)
    where = f"{what}: TOC entry {index} ({name_raw!r})"
    etype = _str(raw, "type", where)
    if etype not in ENTRY_TYPES:
        raise InvalidArgument(f"{where}: unknown type {etype!r}")
    name = normalize_name(name_raw, where)
    if name == "" and etype not in ("dir", "chunk"):
        raise InvalidArgument(f"{where}: only a directory may be the layer root")
    linkname = _str(raw, "linkName", where)
    if "\x00" in linkname:
        raise InvalidArgument(f"{where}: linkName contains NUL")
    if etype == "hardlink":
        linkname = normalize_name(linkname, f"{where} linkName")
    if etype in ("symlink", "hardlink") and not linkname:
        raise InvalidArgument(f"{where}: {etype} without linkName")
    modtime = _str(raw, "modtime", where)
    return TOCEntry(
        name=name,
        type=etype,
        size=_int(raw, "size", where),
        modtime=modtime,
        mtime_ns=parse_rfc3339_ns(modtime, where) if modtime else 0,
        linkname=linkname,
        mode=_int(raw, "mode", where, _MAX_ID),
        uid=_int(raw, "uid", where, _MAX_ID),
        gid=_int(raw, "gid", where, _MAX_ID),
        uname=_str(raw, "userName", where),
        gname=_str(raw, "groupName", where),
        devmajor=_int(raw, "devMajor", where, _MAX_ID),
        devminor=_int(raw, "devMinor", where, _MAX_ID),
        xattrs=_xattrs(raw, where),
        digest=_digest(raw, "digest", where),
        offset=_int(raw, "offset", where),
        end_offset=_int(raw, "endOffset", where),
        inner_offset=_int(raw, "innerOffset", where),
        chunk_offset=_int(raw, "chunkOffset", where),
        chunk_size=_int(raw, "chunkSize", where),
        chunk_digest=_digest(raw, "chunkDigest", where),
        chunk_type=_str(raw, "chunkType", where),
    )


def _check_file(group: list[TOCEntry], what: str, limit: int | None) -> list[TOCEntry]:
    """Check one regular file and its chunks; return them with chunk sizes made explicit."""
    reg = group[0]
    where = f"{what}: file {reg.name!r}"
    if reg.size == 0:
        if len(group) > 1:
            raise InvalidArgument(f"{where}: empty file has chunk entries")
        return group
    out: list[TOCEntry] = []
    expect = 0
    prev_offset = 0
    for i, c in enumerate(group):
        last = i == len(group) - 1
        size = c.chunk_size or (reg.size - c.chunk_offset if last else 0)
        if c.chunk_offset != expect:
            raise InvalidArgument(f"{where}: chunk {i} starts at {c.chunk_offset}, expected "
                                  f"{expect} (chunks must be contiguous)")
        if size <= 0 or c.chunk_offset + size > reg.size:
            raise InvalidArgument(f"{where}: chunk {i} at {c.chunk_offset} has invalid size "
                                  f"{c.chunk_size} for a file of {reg.size} bytes")
        if c.offset <= 0 or c.offset < prev_offset:
            raise InvalidArgument(f"{where}: chunk {i} has invalid blob offset {c.offset}")
        if limit is not None and c.offset >= limit:
            raise InvalidArgument(f"{where}: chunk {i} offset {c.offset} is past the payload "
                                  f"end {limit}")
        if c.end_offset and (c.end_offset <= c.offset
                             or (limit is not None and c.end_offset > limit)):
            raise InvalidArgument(f"{where}: chunk {i} endOffset {c.end_offset} is outside "
                                  f"({c.offset}, {limit}]")
        prev_offset = c.offset
        expect = c.chunk_offset + size
        if c.chunk_size != size:
            # ``c`` was made by this parse and nothing else holds it yet: set the field in
            # place (dataclasses.replace costs a third of parsing a large TOC).
            object.__setattr__(c, "chunk_size", size)
        out.append(c)
    if expect != reg.size:
        raise InvalidArgument(f"{where}: chunks cover {expect} of {reg.size} bytes")
    # zstd:chunked puts the end of the file's last payload frame on the reg entry.
    if reg.end_offset and reg.end_offset <= prev_offset:
        raise InvalidArgument(f"{where}: endOffset {reg.end_offset} precedes its last chunk "
                              f"at {prev_offset}")
    return out


def parse_toc_json(data: bytes, what: str, *, limit: int | None = None,
                   max_entries: int = MAX_TOC_ENTRIES) -> TOC:
    """Parse and validate a TOC. ``limit``: payload offsets must be below it (the TOC offset).

    Raises :class:`InvalidArgument` naming ``what`` (the layer), the entry and the field. A
    regular file whose chunks do not fit together (gaps, sizes, offsets) costs only itself:
    it lands in ``TOC.malformed`` instead.
    """
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise InvalidArgument(f"{what}: TOC is not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what}: TOC is not a JSON object")
    if doc.get("version") != 1:
        raise InvalidArgument(f"{what}: unsupported TOC version {doc.get('version')!r}")
    raw_entries = doc.get("entries")
    if not isinstance(raw_entries, list):
        raise InvalidArgument(f"{what}: TOC has no 'entries' list")
    if len(raw_entries) > max_entries:
        raise InvalidArgument(f"{what}: TOC has {len(raw_entries)} entries, more than the "
                              f"{max_entries} a layer may have")
    entries: list[TOCEntry] = []
    group: list[TOCEntry] = []
    seen: dict[str, str] = {}  # name -> type, to check hardlink targets
    malformed: dict[str, str] = {}

    def flush() -> None:
        if group:
            try:
                entries.extend(_check_file(group, what, limit))
            except InvalidArgument as exc:
                entries.append(group[0])
                malformed[group[0].name] = str(exc)
            group.clear()

    for i, raw in enumerate(raw_entries):
        ent = _entry(raw, i, what)
        if ent.type == "chunk":
            if not group:
                raise InvalidArgument(f"{what}: TOC entry {i}: chunk without a regular file")
            if ent.name not in ("", group[0].name):
                raise InvalidArgument(f"{what}: TOC entry {i}: chunk of {ent.name!r} follows "
                                      f"file {group[0].name!r}")
            group.append(replace(ent, name=group[0].name))
            continue
        flush()
        if ent.type == "hardlink":
            target = seen.get(ent.linkname)
            if target is None or target == "dir":
                raise InvalidArgument(f"{what}: TOC entry {i} ({ent.name!r}): hardlink target "
                                      f"{ent.linkname!r} is not an earlier non-directory entry")
        seen[ent.name] = ent.type
        if ent.type == "reg":
            group.append(ent)
        else:
            entries.append(ent)
    flush()
    tsd = _digest(doc, "tarSplitDigest", f"{what}: TOC")
    return TOC(version=1, entries=entries, tar_split_digest=tsd, malformed=malformed)


def entry_json(e: TOCEntry, *, last_chunk: bool = False) -> dict[str, Any]:
    """One entry in the JSON shape both formats read (zero values omitted, like Go's omitempty).

    ``last_chunk`` writes ``chunkSize: 0`` for the last chunk, as the eStargz spec asks.
    """
    out: dict[str, Any] = {"name": e.name, "type": e.type}
    for key, value in (
        ("size", e.size), ("modtime", e.modtime), ("linkName", e.linkname), ("mode", e.mode),
        ("uid", e.uid), ("gid", e.gid), ("userName", e.uname), ("groupName", e.gname),
        ("devMajor", e.devmajor), ("devMinor", e.devminor),
        ("digest", str(e.digest) if e.digest else ""), ("offset", e.offset),
        ("endOffset", e.end_offset), ("innerOffset", e.inner_offset),
        ("chunkOffset", e.chunk_offset), ("chunkSize", 0 if last_chunk else e.chunk_size),
        ("chunkDigest", str(e.chunk_digest) if e.chunk_digest else ""),
    ):
        if value:
            out[key] = value
    if e.xattrs:
        out["xattrs"] = {k: base64.b64encode(v).decode() for k, v in e.xattrs.items()}
    return out


def toc_json(entries: list[dict[str, Any]], **extra: Any) -> bytes:
    return json.dumps({"version": 1, "entries": entries, **extra}, indent="\t").encode()
