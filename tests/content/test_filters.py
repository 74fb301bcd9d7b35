"""containerd filter grammar and matching semantics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from content.errors import InvalidArgument
from content.filters import Filter, Lookup, Operator, parse_filters


def obj(
    name: str = "", parent: str = "", labels: Mapping[str, str] | None = None
) -> Lookup:
    """An adaptor like containerd's adaptSnapshot: name/parent always present."""
    lab = dict(labels or {})

    def lookup(path: Sequence[str]) -> str | None:
        if not path:
            return None
        if path[0] == "name" and len(path) == 1:
            return name
        if path[0] == "parent" and len(path) == 1:
            return parent
        if path[0] == "labels" and len(path) == 2:
            return lab.get(path[1])
        return None

    return lookup


def matches(
    f: Filter, name: str = "", parent: str = "", labels: Mapping[str, str] | None = None
) -> bool:
    return f.match(obj(name, parent, labels))


def test_empty_matches_everything() -> None:
    assert matches(parse_filters([]), name="x")
    assert matches(parse_filters([""]), name="x")
    assert matches(parse_filters(["name==nope", ""]), name="x")


def test_remote_snapshot_list_filter() -> None:
    f = parse_filters(['labels."containerd.io/snapshot.ref"==sha256:abc,parent=="x"'])
    (conj,) = f.alternatives
    assert conj[0].fieldpath == ("labels", "containerd.io/snapshot.ref")
    assert conj[0].operator is Operator.EQUAL and conj[0].value == "sha256:abc"
    assert conj[1].fieldpath == ("parent",) and conj[1].value == "x"
    ref = {"containerd.io/snapshot.ref": "sha256:abc"}
    assert matches(f, name="n", parent="x", labels=ref)
    assert not matches(f, name="n", parent="y", labels=ref)
    assert not matches(f, name="n", parent="x", labels={})


def test_empty_quoted_value_matches_no_parent() -> None:
    f = parse_filters(['labels."containerd.io/snapshot.ref"==sha256:abc,parent==""'])
    assert f.alternatives[0][1].value == ""
    ref = {"containerd.io/snapshot.ref": "sha256:abc"}
    assert matches(f, parent="", labels=ref)
    assert not matches(f, parent="p", labels=ref)


def test_and_or() -> None:
    f = parse_filters(["name==a,labels.x==1", "name==b"])
    assert matches(f, name="a", labels={"x": "1"})
    assert not matches(f, name="a", labels={"x": "2"})
    assert matches(f, name="b")
    assert not matches(f, name="c")


def test_presence_and_not_equal() -> None:
    f = parse_filters(["labels.foo"])
    assert matches(f, labels={"foo": ""})
    assert not matches(f, labels={})
    ne = parse_filters(["labels.foo!=bar"])
    assert matches(ne, labels={})  # absent compares as "" like containerd
    assert matches(ne, labels={"foo": "baz"})
    assert not matches(ne, labels={"foo": "bar"})
    eq = parse_filters(['labels.foo==""'])
    assert not matches(eq, labels={})  # == needs presence
    assert matches(eq, labels={"foo": ""})


def test_regexp_quoted_and_bare() -> None:
    f = parse_filters(["name~=/^ab+c$/"])
    assert matches(f, name="abbbc")
    assert not matches(f, name="xabc")
    bare = parse_filters(["name~=b+"])
    assert matches(bare, name="abbbc")
    piped = parse_filters(["name~=|a/b|"])
    assert matches(piped, name="xa/by")
    assert parse_filters(["labels.a@=mid"]).match(obj(labels={"a": "amidst"}))


def test_value_may_contain_dots_colons_and_slashes() -> None:
    f = parse_filters(["name==default/1/sha256:ab.cd"])
    assert f.alternatives[0][0].value == "default/1/sha256:ab.cd"


def test_whitespace_between_tokens() -> None:
    f = parse_filters(["name == a , labels.x"])
    assert matches(f, name="a", labels={"x": "1"})


def test_go_escapes_in_quoted() -> None:
    f = parse_filters([r'name=="a\"b\x41\u00e9\101\n"'])
    assert f.alternatives[0][0].value == 'a"bAéA\n'
    g = parse_filters([r'labels."with\"quote"'])
    assert g.alternatives[0][0].fieldpath == ("labels", 'with"quote')


@pytest.mark.parametrize(
    ("text", "pos"),
    [
        ("name==", 6),
        ("name=a", 4),
        ("name<>a", 4),
        ("name===a", 4),
        (",name", 0),
        ("name==a,", 8),
        ('name=="unterminated', 6),
        (r'name=="bad\qescape"', 10),
        ("name..x", 5),
        ("name==a b", 8),
        ("name~=/(/", 9),
    ],
)
def test_syntax_errors_name_filter_and_position(text: str, pos: int) -> None:
    with pytest.raises(InvalidArgument) as e:
        parse_filters([text])
    msg = str(e.value)
    assert repr(text) in msg
    assert f"at {pos} " in msg


def test_bare_string_is_rejected() -> None:
    with pytest.raises(InvalidArgument):
        parse_filters("name==a")
