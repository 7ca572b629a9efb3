"""Canonical leaf bytes: byte-for-byte RFC 8785 inside the leaf domain, loud refusals outside."""

from __future__ import annotations

from typing import Any

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from infra import canonical
from infra.canonical import MAX_SAFE_INTEGER, CanonicalEncodingError

ascii_keys = st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=12)
# Any unicode scalar value: control characters, quotes, backslashes, DEL, U+2028, astral planes.
# (Hypothesis never generates lone surrogates unless asked.)
unicode_strings = st.text(alphabet=st.characters(codec="utf-8"), max_size=24)
safe_ints = st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
scalars = st.none() | st.booleans() | safe_ints | unicode_strings
leaf_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(ascii_keys, children, max_size=5)
    ),
    max_leaves=30,
)


@given(leaf_values)
def test_encoding_is_rfc8785_byte_for_byte(value: Any) -> None:
    assert canonical.encode(value) == rfc8785.dumps(value)


@given(st.dictionaries(ascii_keys, leaf_values, max_size=8))
def test_encoding_an_object_is_rfc8785_and_decodes_back_to_it(value: dict[str, Any]) -> None:
    encoded = canonical.encode(value)
    assert encoded == rfc8785.dumps(value)
    assert canonical.decode(encoded) == value


def test_the_largest_safe_integers_are_accepted() -> None:
    assert canonical.encode([2**53 - 1, -(2**53 - 1)]) == b"[9007199254740991,-9007199254740991]"


def test_keys_are_sorted_and_nothing_is_padded() -> None:
    assert canonical.encode({"b": 1, "a": {"d": [], "c": None}}) == b'{"a":{"c":null,"d":[]},"b":1}'


@pytest.mark.parametrize(
    ("value", "path"),
    [
        pytest.param({"n": 1.0}, "$.n", id="a whole float"),
        pytest.param({"n": [0.5]}, "$.n[0]", id="a float in a list"),
        pytest.param({"a": {"é": 1}}, "$.a", id="a non-ascii key"),
        pytest.param({"a": {"\U0001f600": 1}}, "$.a", id="an astral key"),
        pytest.param({"n": 2**53}, "$.n", id="two to the 53"),
        pytest.param({"n": -(2**53)}, "$.n", id="minus two to the 53"),
        pytest.param({"n": [10**30]}, "$.n[0]", id="a huge integer"),
        pytest.param({"a": {1: "x"}}, "$.a", id="an integer key"),
        pytest.param({"a": {None: "x"}}, "$.a", id="a null key"),
        pytest.param({"t": (1, 2)}, "$.t", id="a tuple"),
        pytest.param({"s": {1}}, "$.s", id="a set"),
        pytest.param({"b": b"x"}, "$.b", id="bytes"),
    ],
)
def test_values_outside_the_leaf_domain_are_refused_naming_the_path(value: Any, path: str) -> None:
    with pytest.raises(CanonicalEncodingError) as raised:
        canonical.encode(value)
    assert str(raised.value).startswith(f"{path}:"), str(raised.value)


@pytest.mark.parametrize(
    ("value", "path"),
    [
        pytest.param("\ud800", "$", id="at the root"),
        pytest.param({"k": "\udfff"}, "$.k", id="in an object"),
        pytest.param({"l": [1, {"x": ["a\ud800b"]}]}, "$.l[1].x[0]", id="deep down"),
    ],
)
def test_a_lone_surrogate_is_refused_naming_its_path(value: Any, path: str) -> None:
    with pytest.raises(CanonicalEncodingError) as raised:
        canonical.encode(value)
    assert str(raised.value).startswith(f"{path}:"), str(raised.value)


@pytest.mark.parametrize("value", [1.0, 2**53, -(2**53), (1,), {1}, b"", object()])
def test_a_refused_top_level_value_names_the_root(value: Any) -> None:
    with pytest.raises(CanonicalEncodingError, match=r"^\$:"):
        canonical.encode(value)


@given(st.floats(allow_nan=False))
def test_every_float_is_refused(value: float) -> None:
    with pytest.raises(CanonicalEncodingError, match="float"):
        canonical.encode({"x": value})


@given(st.integers(min_value=2**53) | st.integers(max_value=-(2**53)))
def test_every_integer_outside_the_safe_range_is_refused(value: int) -> None:
    with pytest.raises(CanonicalEncodingError, match="integer"):
        canonical.encode([value])


anything = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.binary(max_size=4)
    | st.uuids()
    | st.just("\ud800"),
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children)
        | st.dictionaries(st.text(max_size=3) | st.integers(), children, max_size=4)
    ),
    max_leaves=12,
)


@given(anything)
def test_the_fast_domain_check_agrees_with_the_walk_that_names_the_path(value: Any) -> None:
    try:
        canonical.check_value(value)
    except CanonicalEncodingError:
        in_domain = False
    else:
        in_domain = True
    assert canonical._in_domain(value) is in_domain
