"""A small ONNX graph written straight to its protobuf bytes.

The default embedder runs its model with onnxruntime, from weights that ship as a
safetensors file. Turning those weights into a graph would take the ``onnx`` package,
which pins protobuf against other packages users install beside memstream. The part of
the format a feed-forward graph needs is small: a model, a graph, nodes with int, float
and int-list attributes, and tensors as raw little-endian bytes. It is written here, in
the protobuf wire format (varints and length-delimited fields), with the field numbers
of ``onnx.proto``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Graph"]

# TensorProto.DataType
_TYPES = {
    np.dtype(np.float32): 1,
    np.dtype(np.uint8): 2,
    np.dtype(np.int8): 3,
    np.dtype(np.int32): 6,
    np.dtype(np.int64): 7,
}
# AttributeProto.AttributeType
_FLOAT, _INT, _INTS, _STRING = 1, 2, 7, 3


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _int(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _bytes(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _str(number: int, value: str) -> bytes:
    return _bytes(number, value.encode())


def _attribute(name: str, value: int | float | str | Iterable[int]) -> bytes:
    # AttributeProto: name 1, f 2, i 3, s 4, ints 8, type 20
    body = _str(1, name)
    if isinstance(value, bool | int):
        return body + _int(3, int(value)) + _int(20, _INT)
    if isinstance(value, float):
        return body + _varint(2 << 3 | 5) + struct.pack("<f", value) + _int(20, _FLOAT)
    if isinstance(value, str):
        return body + _bytes(4, value.encode()) + _int(20, _STRING)
    packed = b"".join(_varint(v) for v in value)
    return body + _bytes(8, packed) + _int(20, _INTS)


def _tensor(name: str, array: np.ndarray) -> bytes:
    # TensorProto: dims 1, data_type 2, name 8, raw_data 9
    data = np.ascontiguousarray(array)
    body = b"".join(_int(1, d) for d in data.shape)
    body += _int(2, _TYPES[data.dtype]) + _str(8, name)
    return body + _bytes(9, data.astype(data.dtype.newbyteorder("<"), copy=False).tobytes())


def _value_info(name: str, dtype: type, dims: Iterable[int | str]) -> bytes:
    # ValueInfoProto{name 1, type 2: TypeProto{tensor_type 1: {elem_type 1, shape 2}}}
    shape = b"".join(_bytes(1, _int(1, d) if isinstance(d, int) else _str(2, d)) for d in dims)
    tensor = _int(1, _TYPES[np.dtype(dtype)]) + _bytes(2, shape)
    return _str(1, name) + _bytes(2, _bytes(1, tensor))


@dataclass
class Graph:
    """Nodes and weights, in the order they are added; :meth:`model` makes the bytes."""

    nodes: list[bytes] = field(default_factory=list)
    weights: list[bytes] = field(default_factory=list)
    inputs: list[bytes] = field(default_factory=list)
    outputs: list[bytes] = field(default_factory=list)
    _count: int = 0

    def input(self, name: str, dtype: type, dims: Iterable[int | str]) -> str:
        self.inputs.append(_value_info(name, dtype, dims))
        return name

    def output(self, name: str, dtype: type, dims: Iterable[int | str]) -> None:
        self.outputs.append(_value_info(name, dtype, dims))

    def weight(self, name: str, array: np.ndarray) -> str:
        self.weights.append(_tensor(name, array))
        return name

    def op(
        self,
        op_type: str,
        *inputs: str,
        out: str | None = None,
        domain: str = "",
        **attributes: int | float | str | Iterable[int],
    ) -> str:
        """One node; returns the name of its (single) output."""
        self._count += 1
        name = out or f"{op_type.lower()}_{self._count}"
        # NodeProto: input 1, output 2, name 3, op_type 4, attribute 5, domain 7
        body = b"".join(_str(1, i) for i in inputs) + _str(2, name)
        body += _str(3, f"n{self._count}") + _str(4, op_type)
        body += b"".join(_bytes(5, _attribute(k, v)) for k, v in attributes.items())
        if domain:
            body += _str(7, domain)
        self.nodes.append(body)
        return name

    def model(self, opset: int = 17, ir_version: int = 8) -> bytes:
        # GraphProto: node 1, name 2, initializer 5, input 11, output 12
        graph = b"".join(_bytes(1, n) for n in self.nodes) + _str(2, "memstream")
        graph += b"".join(_bytes(5, w) for w in self.weights)
        graph += b"".join(_bytes(11, i) for i in self.inputs)
        graph += b"".join(_bytes(12, o) for o in self.outputs)
        # ModelProto: ir_version 1, producer_name 2, graph 7, opset_import 8
        opsets = _bytes(8, _str(1, "") + _int(2, opset))
        opsets += _bytes(8, _str(1, "com.microsoft") + _int(2, 1))
        return _int(1, ir_version) + _str(2, "memstream") + _bytes(7, graph) + opsets
