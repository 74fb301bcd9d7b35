"""runtime's errors: the shared tree from content.errors, so callers need one table.

    ContentError
    ├── NotFound              container, bundle or rootfs file missing
    ├── AlreadyExists         a container id runc already knows
    ├── FailedPrecondition    e.g. starting a container that is not in the created state
    ├── InvalidArgument       bad user, volume, or no command to run
    │   └── CommandNotRunnable  the command is missing (exit 127) or not executable (126)
    └── Internal              runc failed for a reason we do not recognise

runc failures are translated in one table (runtime.runc); messages name the container id
and carry runc's own error line.

Must not add categories of its own (``CommandNotRunnable`` is an InvalidArgument that also
carries docker's exit status for it).
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


class CommandNotRunnable(InvalidArgument):
    """A container's command cannot be executed; ``exit_status`` is docker's code for why:
    127 when it is not found, 126 when it is found but cannot be executed."""

    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status


__all__ = [
    "AlreadyExists",
    "CommandNotRunnable",
    "ContentError",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
]
