"""Wire-level edit of a serialized sentencepiece ModelProto (no generated protobuf module needed).

sentencepiece's generated ``sentencepiece_model_pb2`` refuses to import when the installed protobuf runtime is
older than its gencode (seen: gencode 7.36.1, runtime 6.33.6), so the one edit the SPM trainer needs (dropping
the temporary seed-file path from the stored trainer spec) walks the protobuf wire format directly.
"""
from __future__ import annotations

from typing import Tuple

SEED_FILE_FIELD = 54  # TrainerSpec.seed_sentencepieces_file (sentencepiece_model.proto)


def _varint(buf: bytes, pos: int) -> Tuple[int, int]:
  value, shift = 0, 0
  while True:
    b = buf[pos]
    pos += 1
    value |= (b & 0x7F) << shift
    if b < 0x80:
      return value, pos
    shift += 7


def _encode_varint(value: int) -> bytes:
  out = bytearray()
  while True:
    b = value & 0x7F
    value >>= 7
    out.append(b | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _fields(buf: bytes):
  """(field number, raw bytes of the whole field) for each top-level field of a serialized message."""
  pos = 0
  while pos < len(buf):
    start = pos
    key, pos = _varint(buf, pos)
    wire = key & 7
    if wire == 0:
      _, pos = _varint(buf, pos)
    elif wire == 1:
      pos += 8
    elif wire == 5:
      pos += 4
    elif wire == 2:
      n, pos = _varint(buf, pos)
      pos += n
    else:
      raise ValueError(f"unsupported protobuf wire type {wire}")
    yield key >> 3, buf[start:pos]


def drop_trainer_spec_field(model_proto: bytes, field: int) -> bytes:
  """``model_proto`` with ``trainer_spec.<field>`` removed (ModelProto.trainer_spec is field 2)."""
  out = bytearray()
  for num, raw in _fields(model_proto):
    if num == 2:
      _, body_start = _varint(raw, 0)
      _, body_start = _varint(raw, body_start)
      body = b"".join(r for n, r in _fields(raw[body_start:]) if n != field)
      raw = raw[:1] + _encode_varint(len(body)) + body
    out += raw
  return bytes(out)
