"""The snapshotter: containerd's overlayfs semantics over one metadata store.

Must not know of HTTP or FUSE: lazy layers reach it only through the ``RemoteLayers`` seam
(``snapfs.snapshot.remote``). Imports nothing above it (``lazy``, ``fuse``, ``daemon``, ``app``).
"""
