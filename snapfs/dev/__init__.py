"""Demo and benchmark tooling: a busybox rootfs, a private local registry, ``snapfs demo``.

Not part of the daemon: nothing in the product packages imports this one.
"""
