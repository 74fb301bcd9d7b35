"""OS plumbing usable by every package: mountinfo, mount/unmount, user namespaces.

Must not import anything of snapfs but ``snapfs.errors``: every package may import this one.
"""
