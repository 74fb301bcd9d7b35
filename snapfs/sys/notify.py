"""sd_notify: tell the service manager about readiness and shutdown (``Type=notify``).

systemd passes ``$NOTIFY_SOCKET``, a unix datagram socket: a path (``/run/systemd/notify``)
or an abstract address written with a leading ``@``. Each notification is one datagram of
newline-separated ``KEY=VALUE`` assignments, e.g. ``READY=1`` once the service serves and
``STOPPING=1`` when it begins to shut down. Without the variable nothing is sent.

This module only sends; it never fails its caller: a manager that went away is logged, and
the daemon carries on serving.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

READY = "READY=1"
STOPPING = "STOPPING=1"


def notify_address(value: str) -> str | None:
    """The ``connect`` address for a ``$NOTIFY_SOCKET`` value; None for unsupported forms
    (e.g. ``vsock:``)."""
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace
    if value.startswith("/"):
        return value
    return None


def sd_notify(*assignments: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``assignments`` (``"READY=1"``, ``"STATUS=…"``) as one datagram; whether it was."""
    env = os.environ if environ is None else environ
    value = env.get("NOTIFY_SOCKET", "")
    if not value:
        return False
    address = notify_address(value)
    if address is None:
        log.warning("NOTIFY_SOCKET=%s: unsupported address, not notifying", value)
        return False
    message = "\n".join(assignments).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as exc:
        log.warning("NOTIFY_SOCKET=%s: cannot notify %s: %s", value, assignments, exc)
        return False
    return True


__all__ = ["READY", "STOPPING", "notify_address", "sd_notify"]
