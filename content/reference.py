"""Image references (``[domain/]path[:tag][@digest]``), normalised as Docker and containerd do.

    busybox                      -> docker.io/library/busybox:latest
    user/img                     -> docker.io/user/img:latest
    localhost:5000/x:tag         -> localhost:5000/x:tag
    host/x:tag@sha256:...        -> tag kept, the digest is what gets fetched

The first path component is a domain when it contains ``.`` or ``:``, is ``localhost``,
or has an uppercase letter (distribution's ``splitDockerDomain``).

Must not resolve anything over the network: parsing and normalising only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from content.digest import Digest, parse_digest
from content.errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_PREFIX = "library/"
NAME_TOTAL_MAX = 255

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DOMAIN = re.compile(
    r"^(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*"
    r"|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$"
)


@dataclass(frozen=True, slots=True)
class Reference:
    domain: str
    path: str
    tag: str | None = None
    digest: Digest | None = None

    @property
    def repository(self) -> str:
        return self.path

    @property
    def locator(self) -> str:
        return f"{self.domain}/{self.path}"

    @property
    def object(self) -> str:
        """What to fetch: the digest when pinned, else the tag (``latest`` by default)."""
        if self.digest is not None:
            return str(self.digest)
        return self.tag or "latest"

    def with_object(self, tag_or_digest: str) -> Reference:
        """The same repository at another tag or digest."""
        if ":" in tag_or_digest:
            return replace(self, tag=None, digest=parse_digest(tag_or_digest))
        _check_tag(self.locator, tag_or_digest)
        return replace(self, tag=tag_or_digest, digest=None)

    def __str__(self) -> str:
        out = self.locator
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out


def _check_tag(text: str, tag: str) -> None:
    if not _TAG.match(tag):
        raise InvalidArgument(
            f"invalid reference {text!r}: tag {tag!r} must be 1-128 of [A-Za-z0-9_.-], "
            "not starting with '.' or '-'"
        )


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    is_domain = sep and (
        "." in first or ":" in first or first == "localhost" or first.lower() != first
    )
    if not is_domain:
        domain, path = DEFAULT_DOMAIN, name
    else:
        domain, path = first, rest
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_PREFIX + path
    return domain, path


def parse_reference(text: str) -> Reference:
    """Parse and normalise an image reference; InvalidArgument says what is wrong."""
    if not text:
        raise InvalidArgument("invalid reference '': empty")
    if text != text.strip():
        raise InvalidArgument(f"invalid reference {text!r}: surrounding whitespace")
    rest, at, digest_text = text.partition("@")
    digest = None
    if at:
        try:
            digest = parse_digest(digest_text)
        except InvalidArgument as exc:
            raise InvalidArgument(f"invalid reference {text!r}: {exc}") from None
    tag: str | None = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        _check_tag(text, tag)
    if not rest:
        raise InvalidArgument(f"invalid reference {text!r}: empty repository name")
    domain, path = _split_domain(rest)
    if not path:
        raise InvalidArgument(f"invalid reference {text!r}: empty repository name")
    if not _DOMAIN.match(domain):
        raise InvalidArgument(f"invalid reference {text!r}: invalid domain {domain!r}")
    if path.lower() != path:
        raise InvalidArgument(f"invalid reference {text!r}: repository name must be lowercase")
    for component in path.split("/"):
        if not _COMPONENT.match(component):
            raise InvalidArgument(
                f"invalid reference {text!r}: invalid path component {component!r}"
            )
    if len(domain) + 1 + len(path) > NAME_TOTAL_MAX:
        raise InvalidArgument(
            f"invalid reference {text!r}: name longer than {NAME_TOTAL_MAX} characters"
        )
    if tag is None and digest is None:
        tag = "latest"
    return Reference(domain, path, tag, digest)
