from __future__ import annotations

import pytest

from content.digest import parse_digest
from content.errors import InvalidArgument
from content.reference import Reference, parse_reference

D = "sha256:" + "ab" * 32

NORMALISED = [
    ("busybox", "docker.io", "library/busybox", "latest", None, "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io", "library/busybox", "1.36", None,
     "docker.io/library/busybox:1.36"),
    ("user/img", "docker.io", "user/img", "latest", None, "docker.io/user/img:latest"),
    ("docker.io/busybox", "docker.io", "library/busybox", "latest", None,
     "docker.io/library/busybox:latest"),
    ("index.docker.io/user/img:v1", "docker.io", "user/img", "v1", None,
     "docker.io/user/img:v1"),
    ("localhost/x", "localhost", "x", "latest", None, "localhost/x:latest"),
    ("localhost:5000/x:tag", "localhost:5000", "x", "tag", None, "localhost:5000/x:tag"),
    (f"127.0.0.1:5000/a/b@{D}", "127.0.0.1:5000", "a/b", None, D, f"127.0.0.1:5000/a/b@{D}"),
    (f"host.example/x:tag@{D}", "host.example", "x", "tag", D, f"host.example/x:tag@{D}"),
    ("ghcr.io/org/team/app:v1.2_3-rc", "ghcr.io", "org/team/app", "v1.2_3-rc", None,
     "ghcr.io/org/team/app:v1.2_3-rc"),
    ("[::1]:5000/x:y", "[::1]:5000", "x", "y", None, "[::1]:5000/x:y"),
    ("a__b/c.d-e:latest", "docker.io", "a__b/c.d-e", "latest", None,
     "docker.io/a__b/c.d-e:latest"),
]


@pytest.mark.parametrize(("text", "domain", "path", "tag", "digest", "norm"), NORMALISED)
def test_parse_normalises_like_docker(text: str, domain: str, path: str, tag: str | None,
                                      digest: str | None, norm: str) -> None:
    ref = parse_reference(text)
    assert (ref.domain, ref.path, ref.tag) == (domain, path, tag)
    assert ref.digest == (parse_digest(digest) if digest else None)
    assert str(ref) == norm
    assert parse_reference(str(ref)) == ref


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty"),
    ("Busybox", "lowercase"),
    ("docker.io/User/img", "lowercase"),
    ("img:-bad", "tag"),
    ("img:" + "a" * 129, "tag"),
    ("img@sha256:abc", "sha256 needs 64"),
    ("img@md5:" + "a" * 32, "unsupported algorithm"),
    ("a//b", "path component"),
    ("a/-b", "path component"),
    ("host:5000/", "empty"),
    (":tag", "empty repository"),
    (" busybox", "whitespace"),
    ("host..example/x", "domain"),
])
def test_invalid_references_say_why(text: str, reason: str) -> None:
    with pytest.raises(InvalidArgument, match=reason):
        parse_reference(text)


def test_properties_and_with_object() -> None:
    ref = parse_reference("127.0.0.1:5000/test/img:1.0")
    assert ref.repository == "test/img"
    assert ref.locator == "127.0.0.1:5000/test/img"
    assert ref.object == "1.0"
    pinned = ref.with_object(D)
    assert pinned.object == D and pinned.tag is None
    assert str(pinned) == f"127.0.0.1:5000/test/img@{D}"
    assert ref.with_object("2.0") == Reference("127.0.0.1:5000", "test/img", "2.0", None)
    with pytest.raises(InvalidArgument):
        ref.with_object("bad tag")
    # digest wins over tag for what is fetched
    assert parse_reference(f"h.io/x:t@{D}").object == D
