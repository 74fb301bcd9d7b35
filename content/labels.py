"""containerd's label size rule (its ``labels.Validate``), for content and snapshot labels.

A label's key and value together fit in 4096 bytes; the content store and the snapshot
metastore both refuse a larger one with this one check. Must not know what any label means.
"""

from __future__ import annotations

from collections.abc import Mapping

from content.errors import InvalidArgument

MAX_LABEL_BYTES = 4096  # len(key) + len(value), encoded


def validate_labels(labels: Mapping[str, str]) -> None:
    """Raise InvalidArgument for the first label whose key and value exceed 4096 bytes."""
    for k, v in labels.items():
        if len(k.encode()) + len(v.encode()) > MAX_LABEL_BYTES:
            raise InvalidArgument(
                f"label {k[:64]!r}: key and value greater than maximum size "
                f"({MAX_LABEL_BYTES} bytes)"
            )


__all__ = ["MAX_LABEL_BYTES", "validate_labels"]
