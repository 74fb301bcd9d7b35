"""OCI and Docker media types, and the annotation/label names snapfs reads.

Must not hold logic: names only.
"""

from __future__ import annotations

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"

DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
LAYER_TYPES = frozenset({OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, DOCKER_LAYER_GZIP})

# Registries differ in what they return for a bare Accept; always ask for all four
# (Debian's distribution 2.8 answers 404 for an OCI manifest asked for with Docker types only).
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST])

# Lazy-layer annotations (layer descriptors) and the labels containerd passes to snapshotters.
ANN_STARGZ_TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
ANN_UNCOMPRESSED_SIZE = "io.containers.estargz.uncompressed-size"
ANN_ZSTD_MANIFEST_CHECKSUM = "io.github.containers.zstd-chunked.manifest-checksum"
ANN_ZSTD_MANIFEST_POSITION = "io.github.containers.zstd-chunked.manifest-position"
ANN_ZSTD_MANIFEST_CHECKSUM_OLD = "io.containers.zstd-chunked.manifest-checksum"
ANN_ZSTD_MANIFEST_POSITION_OLD = "io.containers.zstd-chunked.manifest-position"
