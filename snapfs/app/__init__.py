"""What snapfs commands do: the engine, the image table, pulling, containers, progress.

Used by the CLI (and the demo); talks to a daemon through ``snapfs.client`` or runs the same
stack in-process. Must not import ``snapfs.daemon`` or ``snapfs.cli``.
"""
