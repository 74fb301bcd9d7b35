"""snapfs content: digests, the verified blob store, registries and image formats.

Must not import snapfs or runtime: content is the bottom of the layout.
"""
