"""snapfs runtime: OCI runtime bundles built from image configs, and runc.

Must not import snapfs beyond ``snapfs.sys``: runtime sits beside content, at the bottom.
"""
