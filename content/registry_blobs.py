"""Blob reads: whole (verified), streamed from an offset, byte ranges, into the store.

A ``Range`` is answered 206 by registries that support it; a 200 means the server ignored
it, and the body is skipped up to the offset. A transfer that breaks after making progress
is resumed from where it stopped with a new Range request.

Must not authenticate or choose endpoints itself: every request goes through
``content.registry_transport``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import httpx

from content.auth import repository_scope
from content.descriptor import Descriptor
from content.digest import Digest, verify_bytes
from content.errors import InvalidArgument, Unavailable
from content.hosts import PULL
from content.reference import Reference
from content.registry_ranges import (
    multipart_boundary,
    parse_byteranges,
    parse_content_range,
    range_header,
    slice_parts,
)
from content.registry_transport import Call, RegistryTransport


def blob_call(ref: Reference, digest: Digest) -> Call:
    return Call("blob", f"blob {digest.short()}… in {ref.path}", PULL,
                (repository_scope(ref.path),))


def _body_start(response: httpx.Response, what: str) -> tuple[int, int | None]:
    """Where the body starts in the blob, and the blob's total size when the server says."""
    if response.status_code == 206:
        start, _, total = parse_content_range(response.headers.get("content-range", ""))
        return start, total
    length = response.headers.get("content-length")
    return 0, int(length) if length and length.isdigit() else None


async def _skip(chunks: AsyncIterator[bytes], count: int) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        if count >= len(chunk):
            count -= len(chunk)
            continue
        yield chunk[count:] if count else chunk
        count = 0


@asynccontextmanager
async def open_blob(t: RegistryTransport, ref: Reference, digest: Digest, offset: int = 0,
                    end: int | None = None, expected_size: int | None = None,
                    ) -> AsyncIterator[AsyncIterator[bytes]]:
    """Chunks of the blob from ``offset`` (to ``end`` inclusive, when the server honours it)."""
    call = blob_call(ref, digest)
    headers = {}
    if offset > 0 or end is not None:
        headers["Range"] = f"bytes={offset}-{'' if end is None else end}"
    host, response = await t.request(ref.domain, call, "GET", f"/{ref.path}/blobs/{digest}",
                                     headers=headers, ok=(200, 206))
    try:
        start, total = _body_start(response, call.what)
        if expected_size is not None and total is not None and total != expected_size:
            raise InvalidArgument(f"registry {host.netloc}: {call.what}: registry has {total} "
                                  f"bytes, the descriptor says {expected_size}")
        if start > offset:
            raise InvalidArgument(f"registry {host.netloc}: {call.what}: asked for bytes from "
                                  f"{offset}, got from {start}")
        yield _skip(t.iter_body(response, host.netloc, call.what), offset - start)
    finally:
        await response.aclose()


async def read_span(t: RegistryTransport, ref: Reference, digest: Digest, offset: int,
                    length: int | None, expected_size: int | None = None,
                    retries: int = 4) -> bytes:
    """``length`` bytes at ``offset`` (to the end when None), resuming broken transfers."""
    out = bytearray()
    failures = 0
    while length is None or len(out) < length:
        before = len(out)
        answered = False  # a break in the body (a reset, even before any byte) is retried
        end = None if length is None else offset + length - 1
        try:
            async with open_blob(t, ref, digest, offset + len(out), end, expected_size) as chunks:
                answered = True
                async for chunk in chunks:
                    out += chunk
                    if length is not None and len(out) >= length:
                        del out[length:]
                        break
                    if expected_size is not None and offset + len(out) > expected_size:
                        raise InvalidArgument(
                            f"registry {ref.domain}: blob {digest.short()}… in {ref.path}: "
                            f"longer than the {expected_size} bytes expected")
            break
        except Unavailable:
            if (len(out) == before and not answered) or failures >= retries:
                raise  # no answer at all: the transport retried that already
            failures += 1
            if len(out) == before:
                await t.backoff(failures)
    return bytes(out)


async def fetch_blob(t: RegistryTransport, ref: Reference, desc: Descriptor,
                     retries: int = 4) -> bytes:
    body = await read_span(t, ref, desc.digest, 0, None, desc.size, retries)
    what = f"registry {ref.domain}: blob {desc.digest.short()}… in {ref.path}"
    if len(body) != desc.size:
        raise InvalidArgument(f"{what}: got {len(body)} bytes, the descriptor says {desc.size}")
    verify_bytes(what, body, desc.digest)
    return body


async def blob_size(t: RegistryTransport, ref: Reference, digest: Digest) -> int:
    """The blob's size from a ``HEAD`` request (the lazy path knows digests, not sizes)."""
    call = Call("head", f"blob {digest.short()}… in {ref.path}", PULL,
                (repository_scope(ref.path),))
    host, response = await t.request(ref.domain, call, "HEAD", f"/{ref.path}/blobs/{digest}",
                                     buffer=True)
    length = response.headers.get("content-length", "")
    if not length.isdigit():
        raise InvalidArgument(f"registry {host.netloc}: {call.what}: HEAD answer has no "
                              f"Content-Length ({length!r})")
    return int(length)


async def fetch_range(t: RegistryTransport, ref: Reference, digest: Digest, offset: int,
                      length: int, retries: int = 4) -> bytes:
    if offset < 0 or length < 0:
        raise InvalidArgument(f"blob {digest.short()}…: invalid range {offset}+{length}")
    if length == 0:
        return b""
    data = await read_span(t, ref, digest, offset, length, retries=retries)
    if len(data) != length:
        raise InvalidArgument(
            f"registry {ref.domain}: blob {digest.short()}… in {ref.path}: range "
            f"{offset}+{length} runs past the end of the blob ({offset + len(data)} bytes)")
    return data


async def fetch_ranges(t: RegistryTransport, ref: Reference, digest: Digest,
                       ranges: Sequence[tuple[int, int]], retries: int = 4) -> list[bytes]:
    """Several ranges in one multipart request when the server does it, else one each."""
    wanted = [(o, n) for o, n in ranges if n > 0]
    if len(wanted) <= 1:
        return [await fetch_range(t, ref, digest, o, n, retries) for o, n in ranges]
    call = blob_call(ref, digest)
    host, response = await t.request(ref.domain, call, "GET", f"/{ref.path}/blobs/{digest}",
                                     headers={"Range": range_header(wanted)}, ok=(200, 206))
    parts: list[tuple[int, bytes]] = []
    try:
        boundary = multipart_boundary(response.headers.get("content-type", ""))
        if response.status_code == 206 and boundary is not None:
            body = await _read_until(t, response, host.netloc, call.what, None)
            parts = parse_byteranges(body, boundary)
        else:
            # One range (the server merged or dropped some) or 200 (Range ignored): keep what
            # the body covers up to the last byte wanted, fetch the rest one by one.
            start, _ = _body_start(response, call.what)
            last = max(o + n for o, n in wanted)
            parts = [(start, await _read_until(t, response, host.netloc, call.what, last - start))]
    except Unavailable:
        parts = []  # a broken multipart answer: the ranges are fetched one by one below
    finally:
        await response.aclose()
    out: list[bytes] = []
    for o, n in ranges:
        got = slice_parts(parts, o, n) if n else b""
        out.append(got if got is not None else await fetch_range(t, ref, digest, o, n, retries))
    return out


async def _read_until(t: RegistryTransport, response: httpx.Response, host: str, what: str,
                      limit: int | None) -> bytes:
    out = bytearray()
    async for chunk in t.iter_body(response, host, what):
        out += chunk
        if limit is not None and len(out) >= limit:
            break
    return bytes(out[:limit] if limit is not None else out)
