"""OS plumbing usable by every package: mountinfo, mount/unmount, user namespaces.

Imports nothing of snapfs but ``snapfs.errors``.
"""
