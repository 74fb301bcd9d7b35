"""The content package's error tree, in containerd's categories.

    ContentError
    ├── NotFound              blob, manifest, ingest or registry object missing
    ├── AlreadyExists         a blob or ingest that is already there
    ├── FailedPrecondition    e.g. an ingest locked by another writer
    ├── InvalidArgument       malformed digest, reference, TOC, tar entry …
    │   └── DigestMismatch    verified bytes did not hash to what was expected
    ├── Unavailable           registry down, stalled or answering 5xx after retries
    ├── Unauthorized          the registry refused our credentials
    └── Internal              a bug or an unexpected state

Each boundary translates these in one table (HTTP → these; these → gRPC codes; these → errno).
Messages name the object and the cause.

Must not import anything: every package builds on this tree.
"""

from __future__ import annotations


class ContentError(Exception):
    """Base of every error raised by the content package."""


class NotFound(ContentError):
    pass


class AlreadyExists(ContentError):
    pass


class FailedPrecondition(ContentError):
    pass


class InvalidArgument(ContentError):
    pass


class DigestMismatch(InvalidArgument):
    """Bytes did not verify; ``expected`` and ``actual`` are digest strings."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(f"{what}: digest mismatch: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class Unavailable(ContentError):
    pass


class Unauthorized(ContentError):
    pass


class Internal(ContentError):
    pass
