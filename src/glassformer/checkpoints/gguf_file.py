"""GGUF's container read directly: the header, the key/value metadata and the tensor directory, each tensor's data a
numpy view of the memory-mapped file (nothing is copied until a tensor is converted).

``gguf.GGUFReader`` reads the same but makes a numpy view for every item of every metadata array: SmolLM2's 49,152
tokens and 48,900 merges took it 8 seconds on each load, this reader a fraction of one. The ``gguf`` package still
names the tensor types and their block sizes (``GGML_QUANT_SIZES``) and dequantizes (``gguf.quants``);
``tests/nn/test_quantization.py`` compares both readers on one file; ``tests/checkpoints`` gives it damaged ones.

    file       "GGUF" · version u32 (2 or 3) · tensor count u64 · key/value count u64 · key/values · tensors
               · padding to ``general.alignment`` (default 32) · the tensors' data
    string     length u64 · UTF-8 bytes
    key/value  key string · value type u32 · value
    value      0 u8  1 i8  2 u16  3 i16  4 u32  5 i32  6 f32  7 bool  8 string  10 u64  11 i64  12 f64
               9 array: element type u32 · count u64 · the elements
    tensor     name string · n_dims u32 · dims u64 × n_dims (innermost first) · type u32 · offset u64 (into the data)

Little-endian files only (what llama.cpp writes on every common machine).
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np

SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
# tensor types stored as plain numbers: numpy views of their own dtype (the rest are blocks, viewed as bytes)
PLAIN = {0: np.float32, 1: np.float16, 24: np.int8, 25: np.int16, 26: np.int32, 27: np.int64, 28: np.float64}


@dataclass
class GGUFTensor:
    """One tensor of the file: ``shape`` in GGUF's order (innermost first, ``(in, out)`` for a matrix); ``data`` in
    numpy's order (``(out, in)``), or for a block-quantized type the rows' bytes ``(out, in / block · block bytes)``,
    as ``gguf.GGUFReader`` gives it and ``gguf.quants.dequantize`` takes it."""

    name: str
    tensor_type: int
    shape: tuple[int, ...]
    data: np.ndarray


class _Cursor:
    """Reads values one after the other from a buffer."""

    def __init__(self, buffer: mmap.mmap):
        self.buffer, self.offset = buffer, 0

    def take(self, layout: str):
        if self.offset + struct.calcsize(layout) > len(self.buffer):
            raise ValueError("the file ends inside its header (truncated?)")
        (value,) = struct.unpack_from(layout, self.buffer, self.offset)
        self.offset += struct.calcsize(layout)
        return value

    def count(self, what: str) -> int:
        n = self.take("<Q")
        if n > len(self.buffer) - self.offset:  # a damaged length: refused before anything that large is made
            raise ValueError(f"{what} of {n} items runs past the end of the file")
        return n

    def string(self) -> str:
        n = self.count("a string")
        self.offset += n
        return self.buffer[self.offset - n : self.offset].decode("utf-8")

    def value(self, kind: int):
        if kind == STRING:
            return self.string()
        if kind == ARRAY:
            element, n = self.take("<I"), self.count("an array")
            if element in (STRING, ARRAY):
                return [self.value(element) for _ in range(n)]
            dtype = np.dtype(_scalar(element))
            values = np.frombuffer(self.buffer, dtype, n, self.offset).tolist()
            self.offset += n * dtype.itemsize
            return values
        return self.take(_scalar(kind))


def _scalar(kind: int) -> str:
    if kind not in SCALARS:
        raise ValueError(f"unknown metadata value type {kind}")
    return SCALARS[kind]


class GGUFFile:
    """``metadata`` (key → str, int, float, bool or list) and ``tensors`` (``GGUFTensor``, in the file's order)."""

    def __init__(self, path: str | os.PathLike):
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        with open(path, "rb") as f:
            buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        cursor = _Cursor(buffer)
        if buffer[:4] != b"GGUF":
            raise ValueError("it does not start with GGUF")
        cursor.offset = 4
        version = cursor.take("<I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} (a big-endian file, or newer than versions 2 and 3)")
        n_tensors, n_values = cursor.take("<Q"), cursor.take("<Q")
        self.metadata = {}
        for _ in range(n_values):
            key = cursor.string()
            self.metadata[key] = cursor.value(cursor.take("<I"))
        directory, names = [], set()
        for _ in range(n_tensors):
            name = cursor.string()
            if name in names:
                raise ValueError(f"tensor {name} appears twice")
            names.add(name)
            n_dims = cursor.take("<I")
            shape = tuple(cursor.take("<Q") for _ in range(n_dims))
            directory.append((name, shape, cursor.take("<I"), cursor.take("<Q")))
        alignment = self.metadata.get("general.alignment", 32)
        start = -(-cursor.offset // alignment) * alignment
        self.tensors = []
        for name, shape, kind, offset in directory:
            tensor_type = GGMLQuantizationType(kind)
            numpy_shape = tuple(reversed(shape))
            if kind in PLAIN:
                dtype, count = np.dtype(PLAIN[kind]), math.prod(shape)  # Python integers: no overflow
            else:  # rows of blocks, as bytes
                block, block_bytes = GGML_QUANT_SIZES[tensor_type]
                if shape[0] % block:
                    raise ValueError(f"tensor {name} has rows of {shape[0]}, not a multiple of its blocks of {block}")
                numpy_shape = (*numpy_shape[:-1], shape[0] // block * block_bytes)
                dtype, count = np.dtype(np.uint8), math.prod(numpy_shape)
            if start + offset + count * dtype.itemsize > len(buffer):
                raise ValueError(f"tensor {name} runs past the end of the file (truncated?)")
            data = np.frombuffer(buffer, dtype, count, start + offset).reshape(numpy_shape)
            self.tensors.append(GGUFTensor(name, tensor_type, shape, data))
