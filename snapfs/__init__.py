"""snapfs: a lazy-pulling containerd snapshotter and content store."""

__version__ = "0.1.0"
