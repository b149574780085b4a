"""The front's header blocks: what it writes decodes to what went in, and its memoised decoder
agrees with a plain hpack.Decoder on every block of long mixed sequences."""

from __future__ import annotations

import random

import hpack
from hpack import NeverIndexedHeaderTuple

from top_cell.hpack_blocks import BlockDecoder, encode_headers, leaves_table_alone


def test_written_blocks_decode_to_what_went_in() -> None:
    headers = [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"x-long", b"v" * 300),  # a length past the 7-bit prefix
        (b"x-" + b"n" * 200, b""),
    ]
    assert hpack.Decoder().decode(encode_headers(headers), raw=True) == headers
    assert leaves_table_alone(encode_headers(headers)[1:])  # after the size update: literals
    assert not leaves_table_alone(encode_headers(headers))  # the size update itself


def test_what_changes_the_table_is_recognised() -> None:
    encoder = hpack.Encoder()
    first = encoder.encode([("x-a", "1")])  # a new entry: indexed literal
    again = encoder.encode([("x-a", "1")])  # now a reference to it
    never = encoder.encode([NeverIndexedHeaderTuple("authorization", "secret")])
    assert not leaves_table_alone(first)
    assert leaves_table_alone(again)
    assert leaves_table_alone(never)
    assert not leaves_table_alone(b"\xff")  # cut short


def test_memoised_decoding_agrees_with_hpack_on_long_mixed_sequences() -> None:
    rng = random.Random(5)
    names = ["grpc-timeout", "x-trace", ":path", "grpc-status", "x-big", "authorization"]
    for _ in range(20):
        encoder = hpack.Encoder()
        plain, memo = hpack.Decoder(), BlockDecoder()
        for _ in range(200):
            if rng.random() < 0.05:
                size = rng.choice([0, 64, 256, 4096])
                encoder.header_table_size = size
            headers: list[tuple[str, str]] = []
            for _ in range(rng.randrange(1, 6)):
                name = rng.choice(names)
                value = str(rng.randrange(4)) * rng.choice([1, 5, 150])
                if rng.random() < 0.2:
                    headers.append(NeverIndexedHeaderTuple(name, value))
                else:
                    headers.append((name, value))
            block = encoder.encode(headers)
            assert memo.decode(block) == list(plain.decode(block, raw=True))
