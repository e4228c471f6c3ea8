"""The client's JSON decoding: msgspec first, the standard library for what msgspec refuses,
with the same result as ``json.loads`` either way."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from etl.source.client import decode_json


def typed(value: Any) -> Any:
    """``value`` with every scalar's type next to it: 1 and 1.0 and True differ."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed(item) for item in value]
    return (type(value).__name__, value)


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63 - 2, max_value=2**70)
    | st.integers(min_value=-(2**70), max_value=-(2**63) + 2)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=30,
)


@given(values, st.booleans())
def test_the_same_objects_as_the_standard_library(value: Any, ascii_only: bool) -> None:
    body = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert typed(decode_json(body)) == typed(json.loads(body))


@pytest.mark.parametrize(
    "body",
    [
        b'{"amount": 123456789012345678901234567890}',  # beyond 64 bits: exact
        b'{"a": 1, "a": 2}',  # the last one wins
        b'"\\ud800"',  # a lone surrogate: msgspec refuses it
        b"[1e400]",  # out of a float's range: inf
        '{"a": "\u00e9"}'.encode("utf-16"),  # another encoding
        b'  {"a": [1, 2.5, -0, "x"]}\n',
        b"\xef\xbb\xbf{}",  # a byte order mark
    ],
)
def test_what_the_standard_library_accepts(body: bytes) -> None:
    assert typed(decode_json(body)) == typed(json.loads(body))


def test_nan_as_the_standard_library_reads_it() -> None:
    assert math.isnan(decode_json(b"[NaN]")[0])


@pytest.mark.parametrize("body", [b"<html>", b"", b"{", b"[1] [2]", b'{"a": nan}'])
def test_what_neither_accepts_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)
    with pytest.raises(json.JSONDecodeError):
        decode_json(body)
