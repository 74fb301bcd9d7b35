"""The snapshot label names containerd and its clients send, spelled once.

containerd passes a snapshotter only labels starting ``containerd.io/snapshot/`` and
``containerd.io/snapshot.ref``. A remote-snapshot Prepare carries the chain ID in
``snapshot.ref`` and names the layer with CRI's labels or with stargz's clients' ones; snapfs's
puller sends the CRI set, the lazy path reads both. Must not say what a label means: that is
the snapshotter's and the lazy layers' business.
"""

from __future__ import annotations

LABEL_SNAPSHOT_REF = "containerd.io/snapshot.ref"
LABEL_PREFIX = "containerd.io/snapshot/"

# CRI's remote-snapshot labels (``cri.image-layers`` is comma-separated and may be truncated).
LABEL_CRI_IMAGE_REF = "containerd.io/snapshot/cri.image-ref"
LABEL_CRI_MANIFEST_DIGEST = "containerd.io/snapshot/cri.manifest-digest"
LABEL_CRI_LAYER_DIGEST = "containerd.io/snapshot/cri.layer-digest"
LABEL_CRI_IMAGE_LAYERS = "containerd.io/snapshot/cri.image-layers"

# stargz-snapshotter's clients' set.
LABEL_STARGZ_REFERENCE = "containerd.io/snapshot/remote/stargz.reference"
LABEL_STARGZ_DIGEST = "containerd.io/snapshot/remote/stargz.digest"
LABEL_STARGZ_LAYERS = "containerd.io/snapshot/remote/stargz.layers"

__all__ = ["LABEL_CRI_IMAGE_LAYERS", "LABEL_CRI_IMAGE_REF", "LABEL_CRI_LAYER_DIGEST",
           "LABEL_CRI_MANIFEST_DIGEST", "LABEL_PREFIX", "LABEL_SNAPSHOT_REF",
           "LABEL_STARGZ_DIGEST", "LABEL_STARGZ_LAYERS", "LABEL_STARGZ_REFERENCE"]
