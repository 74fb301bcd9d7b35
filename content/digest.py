"""Content digests (``<algorithm>:<hex>``), as the OCI image spec defines them.

Only sha256 and sha512 are accepted: they are what registries and containerd verify.

Must not do I/O of its own: it hashes the bytes and streams it is handed.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import BinaryIO

from content.errors import DigestMismatch, InvalidArgument

_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_HEX = re.compile(r"^[a-f0-9]+$")


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def short(self) -> str:
        return f"{self.algorithm}:{self.hex[:12]}"


def parse_digest(text: str) -> Digest:
    """Parse and validate ``sha256:<64 hex>`` / ``sha512:<128 hex>``."""
    algorithm, sep, hexpart = text.partition(":")
    if not sep:
        raise InvalidArgument(f"invalid digest {text!r}: missing '<algorithm>:'")
    expected = _HEX_LENGTH.get(algorithm)
    if expected is None:
        raise InvalidArgument(
            f"invalid digest {text!r}: unsupported algorithm {algorithm!r} (sha256, sha512)"
        )
    if len(hexpart) != expected or not _HEX.match(hexpart):
        raise InvalidArgument(
            f"invalid digest {text!r}: {algorithm} needs {expected} lowercase hex characters"
        )
    return Digest(algorithm, hexpart)


class Digester:
    """Incremental hashing that yields a :class:`Digest`."""

    def __init__(self, algorithm: str = "sha256") -> None:
        if algorithm not in _HEX_LENGTH:
            raise InvalidArgument(f"unsupported digest algorithm {algorithm!r}")
        self.algorithm = algorithm
        self._hash = hashlib.new(algorithm)
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)
        self.size += len(data)

    def digest(self) -> Digest:
        return Digest(self.algorithm, self._hash.hexdigest())



def digest_bytes(data: bytes | bytearray | memoryview, algorithm: str = "sha256") -> Digest:
    d = Digester(algorithm)
    d.update(data)
    return d.digest()


def verify_bytes(what: str, data: bytes | bytearray | memoryview, expected: Digest) -> None:
    """Raise :class:`DigestMismatch` naming ``what`` unless ``data`` hashes to ``expected``."""
    actual = digest_bytes(data, expected.algorithm)
    if actual != expected:
        raise DigestMismatch(what, str(expected), str(actual))


class HashingReader:
    """A reader that hashes everything read through it (e.g. a layer's diff ID while it is
    being extracted or rewritten)."""

    def __init__(self, src: BinaryIO, algorithm: str = "sha256") -> None:
        self._src = src
        self.digester = Digester(algorithm)

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n)
        self.digester.update(data)
        return data

    def drain(self, block: int = 1 << 20) -> None:
        """Read (and hash) whatever is left, e.g. the padding after a tar's end marker."""
        while self.read(block):
            pass
