"""snapfs runtime: OCI runtime bundles built from image configs, and runc."""
