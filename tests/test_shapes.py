"""The static integer folding of shape arithmetic (onnxattr/shapes.py fold_ints) against ONNX
Runtime: a wrong fully known value becomes a constant the rules and the If inliner trust."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxattr.runtime import make_session
from onnxattr.shapes import fold_ints

N = helper.make_node
BIG64, BIG32 = 2 ** 63 - 1, 2 ** 31 - 1

# (id, nodes after s = Shape(X) with X [1, 4], int64 constants); the last node's output is compared
CASES = [
    ("slice_axes_omitted_steps_given", [N("Slice", ["s", "b", "e", "", "p"], ["y"])], {"b": [-5], "e": [2], "p": [2]}),
    ("slice_negative_step_start_below_minus_dim", [N("Slice", ["s", "b", "e", "a", "p"], ["y"])],
     {"b": [-5], "e": [-10], "a": [0], "p": [-1]}),
    ("slice_negative_step_to_int64_max", [N("Slice", ["s", "b", "e", "a", "p"], ["y"])],
     {"b": [-1], "e": [BIG64], "a": [0], "p": [-1]}),
    ("slice_negative_step_to_int32_max", [N("Slice", ["s", "b", "e", "a", "p"], ["y"])],
     {"b": [-1], "e": [BIG32], "a": [0], "p": [-1]}),
    ("slice_reverse_all", [N("Slice", ["s", "b", "e", "a", "p"], ["y"])], {"b": [-1], "e": [-(2 ** 63)], "a": [0], "p": [-1]}),
    ("squeeze_empty_axes", [N("Squeeze", ["c", "ax"], ["y"])], {"c": np.array([[5, 6]]), "ax": np.zeros(0, np.int64)}),
    ("cast_int32_wraps", [N("Cast", ["c"], ["y"], to=TensorProto.INT32)], {"c": [2 ** 31 + 5]}),
    ("add_wraps", [N("Add", ["c", "one"], ["y"])], {"c": [BIG64], "one": [1]}),
    ("div_truncates", [N("Div", ["c", "d"], ["y"])], {"c": [-7, 7, 1], "d": [2, -2, -3]}),
    ("reshape_zero_and_minus_one", [N("Concat", ["s", "s"], ["t"], axis=0), N("Reshape", ["t", "r"], ["y"])], {"r": [0, -1]}),
    ("transpose_2d", [N("Concat", ["s", "s"], ["t"], axis=0), N("Reshape", ["t", "r"], ["u"]), N("Transpose", ["u"], ["y"])],
     {"r": [2, 2]}),
    ("compare_and_logic", [N("Equal", ["s", "c"], ["e"]), N("Not", ["e"], ["ne"]), N("Less", ["s", "d"], ["l"]),
                           N("Or", ["ne", "l"], ["y"])], {"c": [1, 5], "d": [2, 2]}),
    ("max_min_broadcast", [N("Max", ["s", "c", "d"], ["m"]), N("Min", ["m", "e"], ["y"])], {"c": [3], "d": [0, 2], "e": [2]}),
    ("constant_of_shape_int", [N("ConstantOfShape", ["s"], ["y"], value=numpy_helper.from_array(np.array([7], np.int64)))], {}),
]


@pytest.mark.parametrize("nodes, consts", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_folded_values_match_onnxruntime(nodes, consts):
    inits = [numpy_helper.from_array(np.asarray(v, dtype=np.int64) if not isinstance(v, np.ndarray) else v, k)
             for k, v in consts.items()]
    nodes = [N("Shape", ["X"], ["s"])] + nodes
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4])], [], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    types = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(m).graph.value_info}
    m.graph.output.append(helper.make_tensor_value_info("y", types.get("y", TensorProto.INT64), None))
    want = make_session(m.SerializeToString(), "cpu")[0].run(None, {"X": np.zeros((1, 4), np.float32)})[0]
    got = fold_ints(g, {"X": [1, 4]}, {t.name: t for t in inits}).get("y")
    assert got is not None, "not folded"
    assert got.shape == want.shape and [int(v) for v in got.flat] == [int(v) for v in want.flat], (got, want)


def test_entries_of_an_unknown_dim_stay_unknown():
    g = helper.make_graph([N("Shape", ["X"], ["s"]), N("Slice", ["s", "b", "e", "a", "p"], ["y"])], "g",
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])], [],
                          [numpy_helper.from_array(np.array(v, np.int64), k)
                           for k, v in {"b": [-1], "e": [-(2 ** 63)], "a": [0], "p": [-1]}.items()])
    got = fold_ints(g, {"X": [None, 4]}, {t.name: t for t in g.initializer})["y"]
    assert list(got) == [4, None]
