"""A minimal root filesystem around the host's static busybox (Debian's busybox-static).

The demo, the benchmarks and the tests build their images from it, so nothing is ever
downloaded. Its /etc/passwd and /etc/group carry the users the runtime resolves (root, an
``app`` user in a supplementary group, nobody).

Must not need the network: everything comes from the host's busybox binary.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from content.errors import FailedPrecondition
from snapfs.sys.userns import in_user_namespace

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")

APPLETS = ("sh", "echo", "cat", "env", "pwd", "id", "ls", "sleep", "true", "false", "touch",
           "mkdir", "kill", "tty", "stat", "head", "wc", "sha256sum", "date", "find")

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app user:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""

GROUP = """\
root:x:0:
staff:x:50:app
app:x:1000:
nogroup:x:65534:
"""


def find_busybox() -> str:
    for path in BUSYBOX_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("busybox")
    if found is None:
        raise FailedPrecondition("busybox not found (apt-get install busybox-static)")
    return found


def make_busybox_rootfs(root: Path, busybox: str | None = None, *,
                        fixed_mtimes: bool = False) -> Path:
    """Write a minimal rootfs at ``root`` (which must not exist yet).

    ``fixed_mtimes`` sets every mtime to 0 so that layers built from it, and so every digest,
    are the same in every run.
    """
    for d in ("bin", "etc", "proc", "dev", "sys", "root", "home/app"):
        (root / d).mkdir(parents=True)
    (root / "tmp").mkdir(mode=0o1777)
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "root", 0o700)
    shutil.copyfile(busybox or find_busybox(), root / "bin" / "busybox")
    os.chmod(root / "bin" / "busybox", 0o755)
    for applet in APPLETS:
        os.symlink("busybox", root / "bin" / applet)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    # Inside a user namespace mapping only our uid, uid 1000 does not exist: leave it ours.
    if os.geteuid() == 0 and not in_user_namespace():
        os.chown(root / "home" / "app", 1000, 1000)
    if fixed_mtimes:
        for dirpath, dirnames, filenames in os.walk(root, topdown=False):
            for name in (*filenames, *dirnames):
                os.utime(Path(dirpath, name), ns=(0, 0), follow_symlinks=False)
        os.utime(root, ns=(0, 0))
    return root
