"""Read a TensorFlow (1.x/2.x) tensor-bundle checkpoint with numpy alone.

A checkpoint `<prefix>.index` + `<prefix>.data-00000-of-00001`:

- `.index` is an SSTable in the LevelDB table format: data blocks of prefix-compressed key/value entries
  with restart points, each block followed by a 5-byte trailer (compression type, masked crc32c); an index
  block mapping the last key of each data block to its BlockHandle; a 48-byte footer holding the
  metaindex and index handles and the magic number.
- The value for the empty key is a BundleHeaderProto; every other key is a tensor name whose value is a
  BundleEntryProto (dtype, shape, shard_id, offset, size, crc32c). The protobufs are decoded by hand.
- `.data-*` holds the raw little-endian tensor bytes; the entry's crc32c is the masked CRC-32C of them.

Nothing here imports TensorFlow or protobuf.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CheckpointError",
    "TensorEntry",
    "crc32c",
    "masked_crc32c",
    "read_index",
    "read_tensors",
]


class CheckpointError(ValueError):
    """The checkpoint is malformed, corrupt or uses a feature this reader does not support."""


# --------------------------------------------------------------------------------------------------------
# CRC-32C (Castagnoli), reflected polynomial 0x82F63B78, init and xor-out 0xFFFFFFFF.
# Vectorised: the message is split into equal chunks whose raw CRCs (register starting at 0) are computed
# side by side in numpy, then the chunk CRCs are folded pairwise with "shift by n zero bytes" operators.
# --------------------------------------------------------------------------------------------------------
_POLY = 0x82F63B78


def _make_table() -> np.ndarray:
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(_POLY), t >> 1).astype(np.uint32)
    return t


_TABLE = _make_table()
_TABLE_PY = [int(v) for v in _TABLE]


def _crc_raw_py(data: bytes, reg: int) -> int:
    tbl = _TABLE_PY
    for b in data:
        reg = tbl[(reg ^ b) & 0xFF] ^ (reg >> 8)
    return reg


def _shift_tables_from_images(images: np.ndarray) -> np.ndarray:
    """images[i] = operator applied to (1 << i). Returns 4 byte tables T with op(r) = XOR_k T[k][byte_k(r)]."""
    bits = (np.arange(256, dtype=np.uint32)[:, None] >> np.arange(8, dtype=np.uint32)[None, :]) & 1  # (256, 8)
    tables = np.zeros((4, 256), dtype=np.uint32)
    for k in range(4):
        imgs = images[8 * k : 8 * k + 8]  # (8,)
        sel = np.where(bits.astype(bool), imgs[None, :], np.uint32(0))  # (256, 8)
        tables[k] = np.bitwise_xor.reduce(sel, axis=1)
    return tables


def _apply(tables: np.ndarray, regs: np.ndarray) -> np.ndarray:
    return (
        tables[0][regs & 0xFF]
        ^ tables[1][(regs >> 8) & 0xFF]
        ^ tables[2][(regs >> 16) & 0xFF]
        ^ tables[3][(regs >> 24) & 0xFF]
    )


def _zero_shift_images(nbytes: int) -> np.ndarray:
    """Images of the 32 basis registers after feeding `nbytes` zero bytes."""
    regs = (np.uint32(1) << np.arange(32, dtype=np.uint32)).astype(np.uint32)
    for _ in range(nbytes):
        regs = _TABLE[regs & 0xFF] ^ (regs >> 8)
    return regs


def crc32c(data: bytes | bytearray | memoryview | np.ndarray) -> int:
    """Standard CRC-32C of `data` (same as Google's crc32c / TF's crc32c::Value)."""
    buf = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8) if not isinstance(data, np.ndarray) else (
        data.reshape(-1).view(np.uint8)
    )
    n = buf.size
    if n < 4096:
        return _crc_raw_py(buf.tobytes(), 0xFFFFFFFF) ^ 0xFFFFFFFF
    # init 0xFFFFFFFF == init 0 with the first four bytes complemented (reflected CRC, n >= 4)
    msg = buf.copy()
    msg[:4] ^= 0xFF
    chunk = 1 << max(6, int(np.ceil(np.log2(np.sqrt(n)))))
    nchunks = -(-n // chunk)
    # leading zero bytes leave a zero register unchanged, so pad at the front
    padded = np.zeros(nchunks * chunk, dtype=np.uint8)
    padded[nchunks * chunk - n :] = msg
    blocks = padded.reshape(nchunks, chunk).T.copy()  # (chunk, nchunks): row i = byte i of every chunk
    regs = np.zeros(nchunks, dtype=np.uint32)
    for row in blocks:
        regs = _TABLE[(regs ^ row) & 0xFF] ^ (regs >> 8)
    # fold: crc(A || B) = shift_len(B)(crc(A)) ^ crc(B), for registers starting at 0
    images = _zero_shift_images(chunk)
    while regs.size > 1:
        if regs.size % 2:
            regs = np.concatenate([np.zeros(1, dtype=np.uint32), regs])  # a zero chunk in front changes nothing
        tables = _shift_tables_from_images(images)
        regs = _apply(tables, regs[0::2]) ^ regs[1::2]
        images = _apply(tables, images)  # shift by 2x the length
    return int(regs[0]) ^ 0xFFFFFFFF


_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes | bytearray | memoryview | np.ndarray) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


# --------------------------------------------------------------------------------------------------------
# varints, protobuf wire format
# --------------------------------------------------------------------------------------------------------
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise CheckpointError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CheckpointError("varint too long")


def _proto_fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """Decode one protobuf message into (field_number, wire_type, value) triples."""
    out = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wtype = key >> 3, key & 7
        if wtype == 0:
            val, pos = _varint(buf, pos)
        elif wtype == 1:
            if pos + 8 > len(buf):
                raise CheckpointError("truncated fixed64")
            (val,) = struct.unpack_from("<Q", buf, pos)
            pos += 8
        elif wtype == 2:
            ln, pos = _varint(buf, pos)
            if pos + ln > len(buf):
                raise CheckpointError("truncated length-delimited field")
            val = bytes(buf[pos : pos + ln])
            pos += ln
        elif wtype == 5:
            if pos + 4 > len(buf):
                raise CheckpointError("truncated fixed32")
            (val,) = struct.unpack_from("<I", buf, pos)
            pos += 4
        else:
            raise CheckpointError(f"unsupported protobuf wire type {wtype}")
        out.append((field, wtype, val))
    return out


# TensorFlow DataType enum -> numpy dtype (the ones a checkpoint of this kind can hold)
_DTYPES = {
    1: np.dtype("<f4"),  # DT_FLOAT
    2: np.dtype("<f8"),  # DT_DOUBLE
    3: np.dtype("<i4"),  # DT_INT32
    4: np.dtype("u1"),  # DT_UINT8
    5: np.dtype("<i2"),  # DT_INT16
    6: np.dtype("i1"),  # DT_INT8
    9: np.dtype("<i8"),  # DT_INT64
    10: np.dtype("?"),  # DT_BOOL
    19: np.dtype("<f2"),  # DT_HALF
}


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int  # masked, as stored


def _parse_shape(buf: bytes) -> tuple[int, ...]:
    dims = []
    for field, _, val in _proto_fields(buf):
        if field == 2:  # Dim
            size = 0
            for f2, _, v2 in _proto_fields(val):
                if f2 == 1:
                    size = v2 - (1 << 64) if v2 >= 1 << 63 else v2
            if size < 0:
                raise CheckpointError("tensor with unknown dimension")
            dims.append(size)
        elif field == 3 and val:
            raise CheckpointError("tensor with unknown rank")
    return tuple(dims)


def _parse_entry(name: str, buf: bytes) -> TensorEntry:
    dtype_code = 0
    shape: tuple[int, ...] = ()
    shard_id = offset = size = crc = 0
    for field, _, val in _proto_fields(buf):
        if field == 1:
            dtype_code = val
        elif field == 2:
            shape = _parse_shape(val)
        elif field == 3:
            shard_id = val
        elif field == 4:
            offset = val
        elif field == 5:
            size = val
        elif field == 6:
            crc = val
        elif field == 7:
            raise CheckpointError(f"{name}: partitioned (sliced) tensors are not supported")
    if dtype_code not in _DTYPES:
        raise CheckpointError(f"{name}: unsupported dtype code {dtype_code}")
    return TensorEntry(name, _DTYPES[dtype_code], shape, shard_id, offset, size, crc)


# --------------------------------------------------------------------------------------------------------
# SSTable (LevelDB table format)
# --------------------------------------------------------------------------------------------------------
_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_LEN = 48
_BLOCK_TRAILER = 5


def _read_block(table: bytes, handle: bytes, what: str) -> bytes:
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    end = offset + size
    if end + _BLOCK_TRAILER > len(table):
        raise CheckpointError(f"{what} block runs past the end of the index file")
    contents = table[offset:end]
    ctype = table[end]
    (stored,) = struct.unpack_from("<I", table, end + 1)
    if masked_crc32c(table[offset : end + 1]) != stored:
        raise CheckpointError(f"{what} block at offset {offset}: crc32c mismatch (index file corrupt)")
    if ctype != 0:
        raise CheckpointError(f"{what} block uses compression type {ctype}; only uncompressed tables are supported")
    return contents


def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise CheckpointError("block too short")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise CheckpointError("bad restart count in block")
    out = []
    pos = 0
    key = b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        vlen, pos = _varint(block, pos)
        if shared > len(key) or pos + non_shared + vlen > limit:
            raise CheckpointError("corrupt block entry")
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        out.append((key, block[pos : pos + vlen]))
        pos += vlen
    return out


def read_index(index_bytes: bytes) -> dict[str, TensorEntry]:
    """Parse a tensor-bundle `.index` file into {tensor name: TensorEntry}, in key order."""
    if len(index_bytes) < _FOOTER_LEN:
        raise CheckpointError("index file too short")
    footer = index_bytes[-_FOOTER_LEN:]
    (magic,) = struct.unpack_from("<Q", footer, _FOOTER_LEN - 8)
    if magic != _TABLE_MAGIC:
        raise CheckpointError("not a TensorFlow tensor-bundle index (bad table magic)")
    _, pos = _varint(footer, 0)  # metaindex offset
    _, pos = _varint(footer, pos)  # metaindex size
    index_handle = footer[pos:]
    index_block = _read_block(index_bytes, index_handle, "index")
    entries: dict[str, TensorEntry] = {}
    header_seen = False
    for _, handle in _block_entries(index_block):
        for key, value in _block_entries(_read_block(index_bytes, handle, "data")):
            if key == b"":
                header_seen = True
                fields = {f: v for f, _, v in _proto_fields(value)}
                if fields.get(1, 1) != 1:
                    raise CheckpointError(f"checkpoint has {fields.get(1)} shards; only one is supported")
                if fields.get(2, 0) != 0:  # endianness: 0 = LITTLE
                    raise CheckpointError("big-endian checkpoints are not supported")
                continue
            name = key.decode("utf-8")
            entries[name] = _parse_entry(name, value)
    if not header_seen:
        raise CheckpointError("index has no bundle header")
    return entries


def read_tensors(
    index_bytes: bytes,
    data_bytes: bytes,
    keep=None,
) -> dict[str, np.ndarray]:
    """Read tensors of a single-shard bundle, verifying each tensor's masked crc32c.

    `keep(name) -> bool` selects tensors (all by default). Returns {name: array} (copies, native byte order).
    """
    entries = read_index(index_bytes)
    out: dict[str, np.ndarray] = {}
    for name, e in entries.items():
        if keep is not None and not keep(name):
            continue
        if e.shard_id != 0:
            raise CheckpointError(f"{name}: shard {e.shard_id}, only single-shard checkpoints are supported")
        expected = int(np.prod(e.shape, dtype=np.int64)) * e.dtype.itemsize
        if e.size != expected:
            raise CheckpointError(f"{name}: {e.size} bytes stored for shape {e.shape} ({expected} expected)")
        if e.offset + e.size > len(data_bytes):
            raise CheckpointError(f"{name}: runs past the end of the data file (truncated?)")
        raw = data_bytes[e.offset : e.offset + e.size]
        got = masked_crc32c(raw)
        if got != e.crc32c:
            raise CheckpointError(
                f"{name}: crc32c mismatch (stored {e.crc32c:#010x}, computed {got:#010x}); the data file is corrupt"
            )
        out[name] = np.frombuffer(raw, dtype=e.dtype).reshape(e.shape).astype(e.dtype.newbyteorder("="))
    return out
