"""What a registry's failures mean: the HTTP → content error table, and transport failures named.

    http_error(status, host, what)       404 NotFound, 401/403 Unauthorized, 416 and other
                                         4xx InvalidArgument, 5xx/408/429 Unavailable
    transport_error(exc, host, what)     Unavailable "registry <host>: <what>: <cause>"
    describe_transport_error(exc)        the cause: connection refused, connect/read timed
                                         out, "TLS certificate verify failed: <problem>"
                                         (unknown CA or self-signed, expired, hostname
                                         mismatch; OpenSSL's words in parentheses) …
    is_refused(exc), tls_problem(exc)    what the retry policy needs to know

httpx wraps the cause several levels deep (httpx → httpcore → trio → OSError / ssl), so the
helpers walk ``__cause__``, ``__context__`` and exception groups.

Must not send requests or decide retries: it only names failures.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator

import httpx

from content.errors import ContentError, InvalidArgument, NotFound, Unauthorized, Unavailable

# OpenSSL's X509_V_ERR_* codes, grouped by what a user has to do about them.
_UNKNOWN_CA = frozenset({2, 18, 19, 20, 21})  # issuer unknown, self-signed (leaf or chain)
_EXPIRED = frozenset({10})
_NOT_YET_VALID = frozenset({9})
_MISMATCH = frozenset({62, 64})  # hostname mismatch, IP address mismatch


def http_error(status: int, host: str, what: str, detail: str = "") -> ContentError:
    """THE table: an HTTP status from a registry → a content error naming host and object."""
    suffix = f" ({detail})" if detail else ""
    prefix = f"registry {host}: {what}"
    if status == 404:
        return NotFound(f"{prefix} not found{suffix}")
    if status in (401, 403):
        return Unauthorized(f"{prefix}: access denied (HTTP {status}){suffix}")
    if status == 416:
        return InvalidArgument(f"{prefix}: range not satisfiable (HTTP 416){suffix}")
    if status >= 500 or status in (408, 429):
        return Unavailable(f"{prefix}: HTTP {status}{suffix}")
    return InvalidArgument(f"{prefix}: HTTP {status}{suffix}")


def error_detail(body: bytes) -> str:
    """distribution's ``{"errors": [{"code": …, "message": …}]}``, shortened."""
    try:
        errors = json.loads(body).get("errors") or []
        return "; ".join(f"{e.get('code', '')}: {e.get('message', '')}" for e in errors)[:300]
    except (ValueError, AttributeError, TypeError):
        return ""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it was caused by or raised during, each once."""
    todo: list[BaseException] = [exc]
    seen: set[int] = set()
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)


def is_refused(exc: BaseException) -> bool:
    """Whether a connect failure was ECONNREFUSED (trio wraps it: "all attempts … failed")."""
    return any(isinstance(e, ConnectionRefusedError) or "refused" in str(e).lower()
               for e in _chain(exc))


def _verify_problem(e: ssl.SSLCertVerificationError) -> str:
    said = str(e.verify_message or e.reason or e)
    code = e.verify_code
    if code in _UNKNOWN_CA:
        problem = (f"unknown CA or self-signed ({said}); name its CA with ca = \"<file>\" "
                   "in hosts.toml, or set skip_verify = true")
    elif code in _EXPIRED:
        problem = f"expired ({said})"
    elif code in _NOT_YET_VALID:
        problem = f"not yet valid ({said})"
    elif code in _MISMATCH:
        problem = f"hostname mismatch ({said})"
    else:
        problem = f"{said} (OpenSSL verify code {code})"
    return f"TLS certificate verify failed: {problem}"


def tls_problem(exc: BaseException) -> str | None:
    """A one-line account of the TLS failure behind ``exc``, or None if it was not one."""
    found: ssl.SSLError | None = None
    for e in _chain(exc):
        if isinstance(e, ssl.SSLCertVerificationError):
            return _verify_problem(e)
        if isinstance(e, ssl.SSLError) and found is None:
            found = e
    if found is None:
        return None
    return f"TLS handshake failed: {found.reason or found}"


def describe_transport_error(exc: httpx.TransportError) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect timed out"
    if isinstance(exc, httpx.ConnectError):
        if is_refused(exc):
            return "connection refused"
        return tls_problem(exc) or f"cannot connect: {text}"
    if isinstance(exc, httpx.ReadTimeout):
        return "read timed out"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"connection closed by the server: {text}"
    return f"connection failed: {text}"


def transport_error(exc: httpx.TransportError, host: str, what: str) -> Unavailable:
    return Unavailable(f"registry {host}: {what}: {describe_transport_error(exc)}")
