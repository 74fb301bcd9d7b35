"""Shared test configuration. Fixtures live in tests/fixtures/, one module per component."""

from __future__ import annotations

pytest_plugins = [
    "tests.fixtures.registry",
    "tests.fixtures.images",
    "tests.fixtures.rootfs",
    "tests.fixtures.daemon",
    "tests.fixtures.containerd",
    "tests.fixtures.cri",
]
