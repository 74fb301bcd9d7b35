"""snapfs: a lazy-pulling containerd snapshotter and content store.

Must not import any of its subpackages: importing snapfs costs nothing.
"""

__version__ = "0.1.0"
