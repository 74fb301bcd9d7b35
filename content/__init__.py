"""snapfs content: digests, the verified blob store, registries and image formats."""
