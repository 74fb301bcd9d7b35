"""The status socket's ``status`` question asked with a blocking socket: no trio, no gRPC.

``snapfs status`` through a daemon is one request and one answer, so it needs none of the
async machinery the rest of ``snapfs.client`` uses and starts in the time of a plain Python
interpreter. The protocol is ``snapfs.client.status``'s (one JSON object per line). Must not
serve, and must not import trio: that is the point of it.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from content.errors import InvalidArgument, Unavailable
from snapfs.client.reports import LayerReport

STATUS_SOCKET = "status.sock"
TIMEOUT = 30.0
MAX_ANSWER = 64 << 20


def status_socket(state: Path) -> Path:
    """Where the daemon whose state directory is ``state`` answers for itself."""
    return state / STATUS_SOCKET


def query_status_blocking(path: Path, *, timeout: float = TIMEOUT) -> list[LayerReport] | None:
    """The daemon's layer reports, or None when no daemon listens on ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return None  # no daemon (or a stale socket file): the caller serves itself
        sock.sendall(json.dumps({"op": "status"}).encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            data = sock.recv(65536)
            if not data:
                raise Unavailable(f"status endpoint {path}: closed the connection without "
                                  "answering")
            buf += data
            if len(buf) > MAX_ANSWER:
                raise InvalidArgument(f"status endpoint {path}: answer longer than "
                                      f"{MAX_ANSWER} bytes")
    except OSError as exc:
        raise Unavailable(f"snapfs daemon status endpoint {path}: "
                          f"{exc.strerror or exc}") from exc
    finally:
        sock.close()
    try:
        obj = json.loads(buf.partition(b"\n")[0])
    except ValueError as exc:
        raise InvalidArgument(f"status endpoint {path}: malformed answer: {exc}") from exc
    if not isinstance(obj, dict):
        raise InvalidArgument(f"status endpoint {path}: answer is not a JSON object")
    if "error" in obj:
        raise InvalidArgument(str(obj["error"]))
    if "layers" not in obj:
        raise InvalidArgument(f"status endpoint {path}: answer lacks 'layers'")
    return [LayerReport.from_json(o) for o in obj["layers"]]


__all__ = ["STATUS_SOCKET", "query_status_blocking", "status_socket"]
