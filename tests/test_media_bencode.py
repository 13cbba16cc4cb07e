"""Bencode for the ng protocol: byte-exact fixtures, strictness, hostile input."""

from __future__ import annotations

import os
import random

import pytest

from sipguard.media.bencode import MAX_DEPTH, BencodeError, decode, decode_dict, encode

# (value, its exact bencoding): what rtpengine sends and expects
FIXTURES: list[tuple[object, bytes]] = [
    ({"command": "ping"}, b"d7:command4:pinge"),
    ({"result": "pong"}, b"d6:result4:ponge"),
    (0, b"i0e"),
    (-42, b"i-42e"),
    (2**63, b"i9223372036854775808e"),
    ("", b"0:"),
    ("caf\u00e9", b"5:caf\xc3\xa9"),
    ([], b"le"),
    ({}, b"de"),
    (["origin", "session-connection"], b"l6:origin18:session-connectione"),
    (
        {
            "command": "offer",
            "call-id": "c1",
            "from-tag": "t",
            "replace": ["origin", "session-connection"],
            "ICE": "remove",
            "sdp": "v=0\r\n",
        },
        b"d3:ICE6:remove7:call-id2:c17:command5:offer8:from-tag1:t"
        b"7:replacel6:origin18:session-connectione3:sdp5:v=0\r\ne",
    ),
    ({"a": [1, {"b": []}]}, b"d1:ali1ed1:bleeee"),
]


@pytest.mark.parametrize(("value", "wire"), FIXTURES)
def test_fixtures_both_ways(value: object, wire: bytes) -> None:
    assert encode(value) == wire
    assert decode(wire) == value


def test_keys_sorted_by_bytes_when_written_and_any_order_read() -> None:
    assert encode({"b": 1, "a": 2, "B": 3}) == b"d1:Bi3e1:ai2e1:bi1ee"
    assert encode({"\u00e9": 1, "z": 2, b"y": 3}) == b"d1:yi3e1:zi2e2:\xc3\xa9i1ee"
    assert encode({"\udcff": 1, "\u00ff": 2}) == b"d2:\xc3\xbfi2e1:\xffi1ee"  # as bytes
    # rtpengine writes its replies in insertion order
    assert decode(b"d3:sdp3:v=06:result2:oke") == {"sdp": "v=0", "result": "ok"}


def test_bytes_and_tuples_encode_and_odd_bytes_round_trip() -> None:
    assert encode(b"\x00\xff") == b"2:\x00\xff"
    assert encode(("a", b"b")) == b"l1:a1:be"
    raw = b"d3:sdp4:\xe9\xff\x00xe"
    assert encode(decode(raw)) == raw


@pytest.mark.parametrize(
    "value",
    [True, 1.5, None, {1: "x"}, {"a", "b"}, object(), {"a": b"", b"a": ""}],
)
def test_encode_refuses_what_has_no_bencoding(value: object) -> None:
    with pytest.raises(BencodeError):
        encode(value)


def test_encode_refuses_deep_nesting() -> None:
    value: object = []
    for _ in range(MAX_DEPTH + 2):
        value = [value]
    with pytest.raises(BencodeError):
        encode(value)


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"e",
        b"x",
        b"i",
        b"ie",
        b"i-e",
        b"i-0e",
        b"i01e",
        b"i+1e",
        b"i1.0e",
        b"i 1e",
        b"i123",
        b"i" + b"9" * 21 + b"e",
        b"01:a",
        b"-1:a",
        b"5:abc",
        b"3abc",
        b"4294967296:x",
        b"l",
        b"li1e",
        b"d",
        b"d1:a",
        b"di1ei2ee",
        b"d1:ai1e1:ai2ee",
        b"d1:ai1ee ",
        b"i1ei2e",
        b"le\x00",
    ],
)
def test_decode_refuses_malformed(wire: bytes) -> None:
    with pytest.raises(BencodeError):
        decode(wire)


def test_decode_depth_is_bounded() -> None:
    assert decode(b"l" * MAX_DEPTH + b"e" * MAX_DEPTH) is not None
    with pytest.raises(BencodeError, match="nested too deeply"):
        decode(b"l" * (MAX_DEPTH + 1) + b"e" * (MAX_DEPTH + 1))
    with pytest.raises(BencodeError):
        decode(b"l" * 100_000)  # no RecursionError
    with pytest.raises(BencodeError):
        decode(b"d1:a" * 100_000)


def test_decode_dict_wants_a_dict() -> None:
    assert decode_dict(b"d6:result2:oke") == {"result": "ok"}
    with pytest.raises(BencodeError, match="not a dictionary"):
        decode_dict(b"le")


def test_decode_refuses_non_bytes() -> None:
    # our own misuse: BencodeError from the sources, TypeError where mypyc checks the type
    with pytest.raises((BencodeError, TypeError)):
        decode("d1:ai1ee")  # type: ignore[arg-type]


def test_every_truncation_of_a_reply_is_an_error() -> None:
    wire = encode({"result": "ok", "sdp": "v=0\r\nc=IN IP4 127.0.0.10\r\n", "n": [1, -2, {}]})
    for cut in range(len(wire)):
        with pytest.raises(BencodeError):
            decode(wire[:cut])


def test_hostile_input_raises_only_bencode_error() -> None:
    rng = random.Random(1603)
    seeds = [encode(v) for v, _ in FIXTURES]
    for _ in range(20_000):
        if rng.random() < 0.5:
            data = (
                os.urandom(rng.randrange(0, 64))
                if rng.random() < 0.3
                else bytes(rng.choice(b"dlie0123456789:-") for _ in range(rng.randrange(0, 40)))
            )
        else:
            base = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 4)):
                if base:
                    base[rng.randrange(len(base))] = rng.randrange(256)
            data = bytes(base)
        try:
            value = decode(data)
        except BencodeError:
            continue
        assert encode(value) == data or isinstance(value, dict)  # dict keys may be reordered
