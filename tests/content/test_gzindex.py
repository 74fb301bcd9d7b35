"""The gzip side index: build it from a plain tar+gzip, parse it back, read every file through
spans inflated from checkpoints; a tampered index fails exactly the reads it affects."""

from __future__ import annotations

import gzip
import io
import json
import random
import struct
import tarfile
import zlib

import pytest
import zstandard

from content.digest import Digest, digest_bytes
from content.errors import DigestMismatch, InvalidArgument
from content.gzindex import MAGIC, build_gzip_index, serialise
from content.gzindex_sparse import sparse_window
from content.gzlayer import GRANULE, gzip_lazy_layer, parse_gzip_index
from content.lazyformat import LazyLayer, decode_chunk
from content.zinflate import WINDOW, inflate_span

SPAN = 64 << 10


def _layer(seed: int = 1, files: int = 300) -> tuple[bytes, dict[str, bytes]]:
    rnd = random.Random(seed)
    words = [bytes(rnd.choice(b"abcdefghij") for _ in range(rnd.randint(2, 9)))
             for _ in range(500)]
    contents: dict[str, bytes] = {}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        d = tarfile.TarInfo("usr")
        d.type, d.mode = tarfile.DIRTYPE, 0o755
        tf.addfile(d)
        for n in range(files):
            size = rnd.choice([0, 10, 3000, 20000, 200000]) if n % 50 else 700000
            data = b" ".join(rnd.choice(words) for _ in range(size // 5))[:size]
            name = f"usr/f{n:04d}" + ("/x" * 60 if n == 7 else "")  # a long (pax) name
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid = len(data), 0o640, 1000 + n
            if n == 3:
                info.pax_headers = {"SCHILY.xattr.user.k": "v"}
            tf.addfile(info, io.BytesIO(data))
            contents[name] = data
        link = tarfile.TarInfo("usr/hard")
        link.type, link.linkname = tarfile.LNKTYPE, "usr/f0001"
        tf.addfile(link)
        contents["usr/hard"] = contents["usr/f0001"]
        sym = tarfile.TarInfo("usr/sym")
        sym.type, sym.linkname = tarfile.SYMTYPE, "f0002"
        tf.addfile(sym)
    return gzip.compress(buf.getvalue(), compresslevel=6, mtime=0), contents


def _reader(blob: bytes):  # type: ignore[no-untyped-def]
    f = io.BytesIO(blob)
    return f.read


def _mount(blob: bytes, index: bytes) -> LazyLayer:
    digest = digest_bytes(blob)
    ix = parse_gzip_index(index, layer=digest, blob_size=len(blob), what="layer t")
    return gzip_lazy_layer(ix, digest_bytes(index), "layer t")


def _read(layer: LazyLayer, blob: bytes, path: str) -> bytes:
    return b"".join(decode_chunk(layer, c, blob[c.blob_offset:c.blob_offset + c.blob_length])
                    for c in layer.files[path])


def test_round_trip_every_file_and_entry() -> None:
    blob, contents = _layer()
    index, stats = build_gzip_index(_reader(blob), digest_bytes(blob), span=SPAN)
    assert stats.checkpoints > 10 and stats.files == 300
    layer = _mount(blob, index)
    assert layer.format == "gzip-index"
    for path, data in contents.items():
        assert _read(layer, blob, path) == data, path
    by_name = {e.name: e for e in layer.toc.entries}
    assert by_name["usr/f0005"].uid == 1005 and by_name["usr/f0005"].mode == 0o640
    assert by_name["usr/f0003"].xattrs == {"user.k": b"v"}
    assert by_name["usr/sym"].linkname == "f0002" and by_name["usr/hard"].type == "hardlink"
    # Every span's chunks are one fetch unit, and no part crosses a span.
    assert sum(len(v) for v in layer.units.values()) == sum(
        len(layer.files[p]) for p in contents if p != "usr/hard")
    assert layer.fetch_unit >= SPAN


def test_index_size_at_default_span() -> None:
    blob, _ = _layer(seed=2, files=400)
    index, stats = build_gzip_index(_reader(blob), digest_bytes(blob))
    # A few MiB layer: one or two checkpoints; the file table dominates and stays small.
    assert stats.blob_size == len(blob) and stats.index_size == len(index)
    assert len(index) < 0.05 * len(blob), (len(index), len(blob))


def test_refuses_wrong_digest_and_multi_member() -> None:
    blob, _ = _layer(files=5)
    with pytest.raises(DigestMismatch):
        build_gzip_index(_reader(blob), digest_bytes(b"other"))
    two = blob + gzip.compress(b"x" * 1024)
    with pytest.raises(InvalidArgument, match="first member"):
        build_gzip_index(_reader(two), digest_bytes(two))


def _sections(index: bytes) -> tuple[dict, dict, bytes]:  # type: ignore[type-arg]
    raw = zstandard.ZstdDecompressor().decompress(index)
    pos = len(MAGIC)
    (n,) = struct.unpack_from(">I", raw, pos)
    head = json.loads(raw[pos + 4:pos + 4 + n])
    pos += 4 + n
    (m,) = struct.unpack_from(">I", raw, pos)
    toc = json.loads(raw[pos + 4:pos + 4 + m])
    return head, toc, raw[pos + 4 + m:]


def test_index_for_another_layer_or_size_is_refused() -> None:
    blob, _ = _layer(files=20)
    index, _ = build_gzip_index(_reader(blob), digest_bytes(blob), span=SPAN)
    with pytest.raises(InvalidArgument, match="is for layer"):
        parse_gzip_index(index, layer=digest_bytes(b"x"), blob_size=len(blob), what="l")
    with pytest.raises(InvalidArgument, match="blob of"):
        parse_gzip_index(index, layer=digest_bytes(blob), blob_size=len(blob) + 1, what="l")
    head, toc, windows = _sections(index)
    bad = json.loads(json.dumps(toc))
    big = max((e for e in bad["entries"] if e.get("chunkSize")), key=lambda e: e["chunkSize"])
    big["offset"] += SPAN * 8  # a part that would cross spans: a structural error
    with pytest.raises(InvalidArgument, match=r"crosses a span|invalid blob offset"):
        _mount(blob, serialise(head, bad, windows))
    head["checkpoints"][1][2] = 0  # out of order
    with pytest.raises(InvalidArgument, match="checkpoint 1"):
        parse_gzip_index(serialise(head, toc, windows), layer=digest_bytes(blob),
                         blob_size=len(blob), what="l")


def _spans_of(layer: LazyLayer, path: str) -> set[int]:
    return {c.blob_offset for c in layer.files[path]}


@pytest.mark.parametrize("tamper", ["span digest", "window", "file offset"])
def test_tampered_index_fails_only_affected_reads(tamper: str) -> None:
    blob, contents = _layer(seed=3)
    index, _ = build_gzip_index(_reader(blob), digest_bytes(blob), span=SPAN)
    good = _mount(blob, index)
    head, toc, windows = _sections(index)
    victim = "usr/f0100"
    span_start = min(_spans_of(good, victim))
    starts = sorted(good.units)
    n = starts.index(span_start)
    assert n > 0
    if tamper == "span digest":
        head["spanDigests"][n] = str(Digest("sha256", "0" * 64))
    elif tamper == "window":
        wpos = sum(c[3] for c in head["checkpoints"][:n])
        wlen = head["checkpoints"][n][3]
        flipped = bytes(b ^ 0x20 for b in windows[wpos:wpos + wlen])
        windows = windows[:wpos] + flipped + windows[wpos + wlen:]
    else:
        for e in toc["entries"]:
            if e["name"] == victim and e["type"] == "reg":
                e["offset"] -= 1  # still inside its span: only its digest can tell
    layer = _mount(blob, serialise(head, toc, windows))
    with pytest.raises(DigestMismatch) as info:
        _read(layer, blob, victim)
    if tamper != "file offset":
        assert f"span {n}" in str(info.value) and "expected sha256:" in str(info.value)
    else:
        assert f"/{victim} at 0 (span {n})" in str(info.value)
    for path, data in contents.items():
        if path != victim and (tamper == "file offset" or span_start not in _spans_of(layer, path)):
            assert _read(layer, blob, path) == data, path


BIG_SPAN = 1 << 20


def _small_parts(layer: LazyLayer, contents: dict[str, bytes]) -> list[str]:
    """Small files whose read stops well before their span's end (version 2 marks)."""
    out = []
    for path in contents:
        cs = layer.files.get(path) or []
        if len(cs) == 1 and 0 < cs[0].size <= 3000:
            span_len = max(c.blob_length for c in layer.units[cs[0].blob_offset])
            if cs[0].blob_length + GRANULE <= span_len:
                out.append(path)
    return out


def test_a_small_part_needs_only_a_prefix_of_its_span() -> None:
    blob, contents = _layer(seed=4)
    index, _ = build_gzip_index(_reader(blob), digest_bytes(blob), span=BIG_SPAN)
    layer = _mount(blob, index)
    small = _small_parts(layer, contents)
    assert len(small) > 20
    for path in small:
        (c,) = layer.files[path]
        fresh = _mount(blob, index)  # a decoder that has inflated nothing yet
        # Exactly the chunk's compressed prefix: no byte of the rest of the span is needed.
        got = decode_chunk(fresh, c, blob[c.blob_offset:c.blob_offset + c.blob_length])
        assert got == contents[path], path
    # Every file reads back through prefixes, in any order (the span streams resume).
    for path in reversed(list(contents)):
        assert _read(layer, blob, path) == contents[path], path


def test_a_part_that_mismatches_after_an_early_stop_is_never_served() -> None:
    blob, contents = _layer(seed=5)
    index, _ = build_gzip_index(_reader(blob), digest_bytes(blob), span=BIG_SPAN)
    good = _mount(blob, index)
    victim = _small_parts(good, contents)[5]
    (c,) = good.files[victim]
    n = sorted(good.units).index(c.blob_offset)
    head, toc, windows = _sections(index)
    for e in toc["entries"]:
        if e["name"] == victim and e["type"] == "reg":
            e["chunkDigest"] = str(digest_bytes(b"not this part"))
    layer = _mount(blob, serialise(head, toc, windows))
    with pytest.raises(DigestMismatch) as info:
        _read(layer, blob, victim)
    assert f"/{victim} at 0 (span {n})" in str(info.value)
    assert str(digest_bytes(b"not this part")) in str(info.value)
    # Its neighbours in the same span are served, each verified against its own digest.
    same = [p for p in contents if p != victim and layer.files.get(p)
            and layer.files[p][0].blob_offset == c.blob_offset]
    assert same
    for path in same:
        assert _read(layer, blob, path) == contents[path], path
    # Corrupt compressed bytes inside the prefix: an error, never the bytes; then the good
    # bytes are served (the span's stream was dropped, not kept poisoned).
    layer = _mount(blob, index)
    at = c.blob_offset + 8  # before the part: everything after it inflates wrong
    bad = bytearray(blob[c.blob_offset:c.blob_offset + c.blob_length])
    bad[at - c.blob_offset] ^= 0xFF
    with pytest.raises(DigestMismatch, match=f"span {n}"):
        decode_chunk(layer, c, bytes(bad))
    assert _read(layer, blob, victim) == contents[victim]


def test_a_tampered_span_digest_fails_once_the_span_is_inflated_whole() -> None:
    blob, contents = _layer(seed=6)
    index, _ = build_gzip_index(_reader(blob), digest_bytes(blob), span=BIG_SPAN)
    good = _mount(blob, index)
    victim = _small_parts(good, contents)[3]
    (c,) = good.files[victim]
    n = sorted(good.units).index(c.blob_offset)
    head, toc, windows = _sections(index)
    head["spanDigests"][n] = str(digest_bytes(b"not this span"))
    layer = _mount(blob, serialise(head, toc, windows))
    # An early stop is vouched for by the part's own digest …
    assert decode_chunk(layer, c, blob[c.blob_offset:c.blob_offset + c.blob_length]) \
        == contents[victim]
    # … and the span's digest is checked as soon as the whole span is inflated.
    start, length = good_range = (c.blob_offset, max(
        x.blob_length for x in good.units[c.blob_offset]))
    assert good_range[1] > c.blob_length
    fresh = _mount(blob, serialise(head, toc, windows))
    with pytest.raises(DigestMismatch, match=f"span {n} .*not this span|span {n} .*expected"):
        decode_chunk(fresh, c, blob[start:start + length])


def test_a_wrong_mark_fails_reads_and_never_serves_wrong_bytes() -> None:
    blob, contents = _layer(seed=7)
    index, _ = build_gzip_index(_reader(blob), digest_bytes(blob), span=BIG_SPAN)
    head, toc, windows = _sections(index)
    head["marks"] = [[o, n + 1] for n, (o, _) in enumerate(head["marks"])]  # far too early
    bad = serialise(head, toc, windows)
    failed = 0
    for path, data in contents.items():
        try:  # each read on its own (a stream fed for one part serves the next ones)
            assert _read(_mount(blob, bad), blob, path) == data, path
        except DigestMismatch as exc:
            assert "were needed" in str(exc) or "digest mismatch" in str(exc)
            failed += 1
    assert failed > 0


def test_version_1_index_mounts_with_whole_spans_and_others_are_refused() -> None:
    blob, contents = _layer(seed=8, files=80)
    index, _ = build_gzip_index(_reader(blob), digest_bytes(blob), span=SPAN)
    head, toc, windows = _sections(index)
    assert head["version"] == 2
    del head["marks"]
    with pytest.raises(InvalidArgument, match="'marks'"):
        _mount(blob, serialise(head, toc, windows))
    head["version"] = 1  # what snapfs wrote before marks
    layer = _mount(blob, serialise(head, toc, windows))
    for cs in layer.units.values():
        assert {c.blob_length for c in cs} == {layer.units and max(x.blob_length for x in cs)}
    for path, data in contents.items():
        assert _read(layer, blob, path) == data, path
    head["version"] = 3
    with pytest.raises(InvalidArgument, match="gzip index version 3 is not supported"):
        _mount(blob, serialise(head, toc, windows))


def test_windows_keep_only_the_bytes_their_spans_refer_to() -> None:
    """Sparse windows: most window bytes are zeroed (the index shrinks), every file still
    reads back exactly (the round trip inflates every span from its sparse window)."""
    blob, contents = _layer(seed=5)
    index, _ = build_gzip_index(_reader(blob), digest_bytes(blob), span=SPAN)
    ix = parse_gzip_index(index, layer=digest_bytes(blob), blob_size=len(blob), what="t")
    windows = [cp.window for cp in ix.checkpoints[1:]]
    assert len(windows) > 10 and all(len(w) == WINDOW for w in windows)
    zeros = sum(w.count(0) for w in windows)
    assert zeros > 0.5 * sum(map(len, windows)), zeros
    for i, cp in enumerate(ix.checkpoints):  # every span, whole, against its digest
        start, length = ix.span_range(i)
        out = inflate_span(blob[start:start + length], ix.span_out(i)[1], bits=cp.bits,
                           window=cp.window)
        assert digest_bytes(out) == ix.span_digests[i], i
    layer = _mount(blob, index)
    for path, data in contents.items():
        assert _read(layer, blob, path) == data, path


def test_a_sparse_window_that_does_not_reproduce_the_output_is_not_kept() -> None:
    """The walk only proposes: if inflating with its window differs from the real output
    (here: the output is not what the data gives), the full window is kept."""
    rnd = random.Random(6)
    history = bytes(rnd.choice(b"abcdef") for _ in range(WINDOW))
    co = zlib.compressobj(6, zlib.DEFLATED, -15, zdict=history)
    later = history[100:5000] + bytes(rnd.randbytes(2000))
    data = co.compress(later) + co.flush()
    sparse = sparse_window(data, 0, history, later)
    assert sparse != history and len(sparse) == WINDOW and sparse.count(0) > WINDOW // 2
    assert inflate_span(data, len(later), bits=0, window=sparse) == later
    assert sparse_window(data, 0, history, later[:-1] + b"?") == history
