"""Which processes use a ``snapfs fuse-server`` now: the daemon, daemon-less commands.

A client says ``hello`` (with its pid), then holds a ``watch`` connection open for as long as
it lives. Between the two it is *arriving*: the server must not decide it is unused in that
gap, or it would exit under a command about to add its layers. So an arrival counts for
``ARRIVAL`` seconds (a client watches within milliseconds of its hello; a slow machine gets
margin), a watch until its connection closes (the client exited, or was killed).

Pure bookkeeping on the server's loop; times come from the caller (``trio.current_time``).
Must not decide anything about mounts: ``snapfs.lazy.fuse_server`` combines this with
whether a mount uses a layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ARRIVAL = 10.0  # seconds a hello counts as a client about to watch


@dataclass(slots=True)
class Clients:
    """Arrivals (pid → time of its hello) and watches (connection id → pid)."""

    arriving: dict[int, float] = field(default_factory=dict)
    watching: dict[int, int] = field(default_factory=dict)

    def hello(self, pid: int, now: float) -> None:
        if pid not in self.watching.values():
            self.arriving[pid] = now

    def watch(self, conn: int, pid: int) -> None:
        self.watching[conn] = pid
        self.arriving.pop(pid, None)

    def leave(self, conn: int) -> None:
        self.watching.pop(conn, None)

    def others(self, pid: int | None, now: float) -> bool:
        """Whether any process but ``pid`` watches or is arriving."""
        if any(who != pid for who in self.watching.values()):
            return True
        for who, since in list(self.arriving.items()):
            if now - since >= ARRIVAL:
                del self.arriving[who]  # it never watched: gone (or it was killed)
            elif who != pid:
                return True
        return False


__all__ = ["ARRIVAL", "Clients"]
