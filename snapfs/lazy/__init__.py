"""Lazy layers: from a Prepare's labels to a FUSE directory whose chunks arrive on demand.

Layer records, the fetcher and its scheduling, materialisation (the hot path), startup
profiles, and ``open`` (assembling the lazy stack). Serves the snapshotter's ``RemoteLayers``
seam; never imports ``daemon``, ``app``, ``client`` or ``cli``.
"""
