"""runtime's errors: the shared tree from content.errors, so callers need one table.

    ContentError
    ├── NotFound              container, bundle or rootfs file missing
    ├── AlreadyExists         a container id runc already knows
    ├── FailedPrecondition    e.g. starting a container that is not in the created state
    ├── InvalidArgument       bad user, volume, or no command to run
    └── Internal              runc failed for a reason we do not recognise

runc failures are translated in one table (runtime.runc); messages name the container id
and carry runc's own error line.

Must not add categories of its own.
"""

from __future__ import annotations

from content.errors import (
    AlreadyExists,
    ContentError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
)

__all__ = [
    "AlreadyExists",
    "ContentError",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
]
