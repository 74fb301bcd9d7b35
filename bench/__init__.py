"""Benchmarks: time to first response of snapfs against containerd's native path.

``python -m bench ttfr`` builds the images, pushes them to a private registry behind a shaped
loopback link (:mod:`bench.shaper`), and measures every mode on every image.
"""

from __future__ import annotations
