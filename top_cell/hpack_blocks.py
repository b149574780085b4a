"""Header blocks (RFC 7541) for the front's HTTP/2 relay: how they go out and how they come in.

Out: :func:`encode_headers` writes literals that are never added to a dynamic table, after a
dynamic table size update to zero, so it is valid whatever table size the peer allows and
there is no encoder state to keep. It costs some bytes on the wire and saves CPU.

In: :class:`BlockDecoder` wraps ``hpack.Decoder`` with a memo. A gRPC peer that has warmed up
sends the same few blocks again and again, made only of references into its table
(``c5c48386c3c2c1bebf`` for every GetNode of one client, ``88c0bf`` for every leaf's response
headers). Decoding such a block does not change the table, so until a block that does change it
arrives, the same bytes decode to the same headers and the memo answers them; a block that may
change the table (an indexed literal, a size update, anything it cannot read) is decoded by
``hpack`` and empties the memo.
"""

from __future__ import annotations

import hpack

__all__ = ["BlockDecoder", "Headers", "encode_headers", "leaves_table_alone"]

Headers = list[tuple[bytes, bytes]]
_MEMO_LIMIT = 256


def _int(value: int, prefix_bits: int, first: int) -> bytes:
    """An HPACK integer (§5.1) with ``first`` holding the bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append(value & 127 | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


_TABLE_SIZE_ZERO = _int(0, 5, 0x20)


def encode_headers(headers: Headers) -> bytes:
    """Literals without indexing (§6.2.2), opened by a table size update to zero (§6.3)."""
    parts = [_TABLE_SIZE_ZERO]
    for name, value in headers:
        parts += (b"\x00", _int(len(name), 7, 0), name, _int(len(value), 7, 0), value)
    return b"".join(parts)


def _read_int(block: bytes, i: int, mask: int) -> tuple[int, int]:
    """(value, next offset) of the integer whose prefix byte is at ``i``; IndexError if cut."""
    value = block[i] & mask
    i += 1
    if value < mask:
        return value, i
    shift = 0
    while True:
        byte = block[i]
        i += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def leaves_table_alone(block: bytes) -> bool:
    """Whether decoding ``block`` cannot change the dynamic table: it holds only indexed
    fields (§6.1) and literals that are not indexed (§6.2.2, §6.2.3), and no size update."""
    i, end = 0, len(block)
    try:
        while i < end:
            byte = block[i]
            if byte & 0x80:
                _, i = _read_int(block, i, 0x7F)
            elif byte & 0xE0:  # 01xxxxxx indexed literal, 001xxxxx size update
                return False
            else:
                name_index, i = _read_int(block, i, 0x0F)
                if name_index == 0:
                    length, i = _read_int(block, i, 0x7F)
                    i += length
                length, i = _read_int(block, i, 0x7F)
                i += length
    except IndexError:
        return False
    return i == end


class BlockDecoder:
    """``hpack.Decoder`` for one connection, with the memo described above."""

    def __init__(self) -> None:
        self._decoder = hpack.Decoder()
        self._memo: dict[bytes, Headers] = {}

    def decode(self, block: bytes) -> Headers:
        """The block's headers (raw bytes). Raises ``hpack.HPACKError`` on a bad block."""
        known = self._memo.get(block)
        if known is not None:
            return list(known)
        headers: Headers = list(self._decoder.decode(block, raw=True))
        if leaves_table_alone(block):
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            self._memo[block] = headers
            return list(headers)
        self._memo.clear()
        return headers
