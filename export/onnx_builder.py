"""A thin helper for writing ONNX graphs by hand: named values, constants as initializers.

``onnx.helper`` wants every node, name and constant spelled out; this keeps the graph code in
:mod:`export.onnx_chain` readable::

    g = GraphBuilder("demo")
    x = g.input("x", np.float32, [2, "N"])
    y = g.op("Mul", x, g.const(np.float32(2.0)))
    g.output(y, "y", np.float32, [2, "N"])
    model = g.model(opset=18)

Constants become initializers (no node runs for them at inference time) and identical
constants are stored once.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Value = str


def onnx_type(dtype) -> int:
    """numpy dtype -> ONNX element type."""
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


class GraphBuilder:
    """Accumulates nodes, initializers, inputs and outputs of one ONNX graph."""

    def __init__(self, name: str):
        self.name = name
        self.nodes: List[onnx.NodeProto] = []
        self.initializers: List[onnx.TensorProto] = []
        self.inputs: List[onnx.ValueInfoProto] = []
        self.outputs: List[onnx.ValueInfoProto] = []
        self._counter: Dict[str, int] = {}
        self._const_cache: Dict[Tuple, Value] = {}
        self._prefix: List[str] = []

    # ------------------------------------------------------------------ naming
    def _fresh(self, hint: str) -> str:
        base = "/".join(self._prefix + [hint])
        n = self._counter.get(base, 0)
        self._counter[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    def scope(self, name: str) -> "_Scope":
        """``with g.scope("eq"):`` prefixes the names of the values created inside."""
        return _Scope(self, name)

    # ------------------------------------------------------------------ graph interface
    def input(self, name: str, dtype, shape: Sequence[Union[int, str, None]]) -> Value:
        self.inputs.append(helper.make_tensor_value_info(name, onnx_type(dtype), list(shape)))
        return name

    def output(self, value: Value, name: str, dtype, shape: Optional[Sequence[Union[int, str, None]]]) -> None:
        if value != name:
            self.nodes.append(helper.make_node("Identity", [value], [name], name=self._fresh("out_" + name)))
        self.outputs.append(helper.make_tensor_value_info(name, onnx_type(dtype), None if shape is None else list(shape)))

    def const(self, value, dtype=None, hint: str = "const") -> Value:
        """An initializer holding ``value`` (numpy array or scalar); identical constants are shared."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._const_cache:
            name = self._fresh(hint)
            self.initializers.append(numpy_helper.from_array(arr, name))
            self._const_cache[key] = name
        return self._const_cache[key]

    def i64(self, *values: int) -> Value:
        """A 1-D int64 constant (shapes, axes, indices)."""
        return self.const(np.array(values, dtype=np.int64), hint="i64")

    def op(self, op_type: str, *inputs: Optional[Value], n_out: int = 1, hint: Optional[str] = None,
           **attrs) -> Union[Value, Tuple[Value, ...]]:
        """Append a node; returns its output name (or a tuple of ``n_out`` names).

        ``None`` among the inputs marks an omitted optional input.
        """
        base = hint or op_type.lower()
        outs = [self._fresh(base) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, ["" if i is None else i for i in inputs], outs,
                                           name=self._fresh("n_" + base), **attrs))
        return outs[0] if n_out == 1 else tuple(outs)

    # ------------------------------------------------------------------ conveniences
    def slice(self, x: Value, start, end, axis: int, step: int = 1) -> Value:
        """``x[start:end]`` along ``axis``; ``start``/``end`` are ints or 1-element int64 values."""
        s = self.i64(start) if isinstance(start, (int, np.integer)) else start
        e = self.i64(end) if isinstance(end, (int, np.integer)) else end
        return self.op("Slice", x, s, e, self.i64(axis), self.i64(step))

    def cast(self, x: Value, dtype) -> Value:
        return self.op("Cast", x, to=onnx_type(dtype))

    def reshape(self, x: Value, shape: Union[Sequence[int], Value]) -> Value:
        s = self.i64(*shape) if isinstance(shape, (list, tuple)) else shape
        return self.op("Reshape", x, s)

    def concat(self, values: Sequence[Value], axis: int) -> Value:
        return self.op("Concat", *values, axis=axis)

    def subgraph(self) -> onnx.GraphProto:
        """This builder as the body of an ``If`` branch (no inputs; it may read outer values).

        Give the builder a :meth:`scope` so its value names cannot clash with the outer graph's.
        """
        return helper.make_graph(self.nodes, self.name, [], self.outputs, self.initializers)

    def model(self, opset: int, doc: str = "", metadata: Optional[Dict[str, str]] = None,
              producer: str = "refmaster") -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers, doc_string=doc)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name=producer)
        # Pin the IR version to what the opset needs, so older runtimes can load the file.
        model.ir_version = min(model.ir_version, 9)
        for k, v in (metadata or {}).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = k, v
        return model


class _Scope:
    def __init__(self, g: GraphBuilder, name: str):
        self.g, self.name = g, name

    def __enter__(self):
        self.g._prefix.append(self.name)
        return self.g

    def __exit__(self, *exc):
        self.g._prefix.pop()
        return False


__all__ = ["GraphBuilder", "Value", "onnx_type", "TensorProto"]
