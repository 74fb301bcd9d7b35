"""Demo and benchmark tooling: a busybox rootfs, a private local registry, ``snapfs demo``.

Must not be imported by the daemon, the app or anything below: it is tooling for demos,
tests and benchmarks.
"""
