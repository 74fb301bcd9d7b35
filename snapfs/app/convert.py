"""``snapfs convert SRC DST``: where SRC is read from, and the conversion with progress.

SRC is a registry reference, or ``oci:DIR[:TAG]`` — an OCI image layout such as
``skopeo copy … oci:DIR:TAG`` or ``umoci`` write (``content.ocilayout``). DST is always a
registry reference. The layers' work is ``content.convert``'s; this module picks the source,
opens the registry with the config's hosts directory and credentials, and reports progress.

Must not print anything but through the progress it is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from content.convert import convert_image
from content.convert_layers import ConvertProgress, Format, ImageSource
from content.descriptor import parse_platform
from content.digest import Digest
from content.ocilayout import OciLayout, parse_layout_ref
from content.profilefile import read_profile
from content.reference import Reference
from content.registry import open_registry
from snapfs.app.imageops import parse_image_ref
from snapfs.config import Config


def source_of(text: str) -> tuple[Reference, ImageSource | None]:
    """SRC's reference, and its reader when it is not a registry (None: the registry)."""
    layout_ref = parse_layout_ref(text)
    if layout_ref is None:
        return parse_image_ref(text), None
    layout = OciLayout(layout_ref.directory)
    return layout.reference(layout_ref.tag), layout


async def convert(config: Config, src_text: str, dst_text: str, *, format: Format,
                  prioritize_file: Path | None, chunk_size: int, platform: str | None,
                  all_platforms: bool, docker_config: Path | None,
                  progress: ConvertProgress | None = None) -> Digest:
    """Convert SRC and push it at DST; the pushed manifest's (or index's) digest."""
    src, source = source_of(src_text)
    dst = parse_image_ref(dst_text)
    prioritize: Sequence[str] = await read_profile(prioritize_file) if prioritize_file else []
    async with open_registry(hosts_dir=config.registry.hosts_dir(),
                             docker_config=docker_config or config.registry.docker_config_path(),
                             timeout=config.registry.read_timeout,
                             connect_timeout=config.registry.connect_timeout) as registry:
        return await convert_image(
            registry, src, dst, format=format, prioritize=prioritize, chunk_size=chunk_size,
            platform=parse_platform(platform) if platform else None,
            all_platforms=all_platforms, source=source, progress=progress)


__all__ = ["convert", "source_of"]
