"""The one place that makes names, constants and opset-correct nodes, and knows shapes.

Rules never touch protobufs directly: they call `Builder.op` and the helpers below, which
emit the form of each op that the model's opset defines (axes as attribute or input, ...).
"""

from __future__ import annotations

import contextlib
import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import dims
from .dims import symbolic_dims
from .errors import OptionError, UnsupportedModelError
from .protos import FLOAT_TYPES, constant_tensor, default_opset, describe, reads, rename_reads
from .shapes import (FED_SUFFIX, feed_ints, fix_pool_shapes, fold_ints, free_dims, keep_whole_slice_dims, ml_shapes,
                     skeleton, trial_shapes, trial_with_distinct_dims)

TUNE_FOR = ("cpu", "cuda")  # the ONNX Runtime provider whose kernels an exported graph's formulation suits


def _trial_dim(trial: dict, name: str, i: int):
    dims = trial.get(name)
    return dims[i] if dims is not None and i < len(dims) else None


class Builder:
    """Collects the nodes added to a model's graph, with unique names and shape knowledge.

    `model` is only read; `nodes` holds what was added. `types` and `shapes` come from ONNX
    shape inference: elem type per tensor name, and dims (int, or None when unknown).
    """

    def __init__(self, model: onnx.ModelProto, dtype: int, tune_for: str = "cpu"):
        if tune_for not in TUNE_FOR:
            raise OptionError(f"tune_for must be one of {', '.join(TUNE_FOR)}, not {tune_for!r}")
        self.model = model
        self.tune_for = tune_for
        self.opset = default_opset(model)
        self.dtype = dtype
        self.np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.types: dict[str, int] = {}
        self.shapes: dict[str, list] = {}
        self.consts: dict[str, onnx.TensorProto] = {}
        self._counter = itertools.count()
        self._const_cache: dict[tuple, str] = {}
        self.needed: set[str] = set()  # tensors that need a gradient (set by the driver)
        self.unbounded: set[str] = set()  # gradients that may be +-inf for finite inputs (set by the driver)
        self.shape_conflicts: dict[str, str] = {}  # output -> why ONNX and ONNX Runtime disagree on its shape
        self.shape_protos: dict[str, onnx.TensorShapeProto] = {}  # inferred shapes, symbolic dims kept
        self.value_info: dict[str, onnx.ValueInfoProto] = {}  # shapes declared for added tensors
        g = model.graph
        self._forward = {o for n in g.node for o in n.output} | {i.name for i in g.input} | {i.name for i in g.initializer}
        self._shapes_of: dict[str, str] = {}
        self._early = 0  # added nodes at the front of `nodes` (Shape nodes of forward tensors)
        self._padded: dict[str, tuple[str, list[int]]] = {}  # output of a zero Pad added by pad() -> (input, pads)
        self._used = self._forward | {n.name for n in g.node}
        self._trials: tuple[dict, dict] | None = None  # the dims of both shape trials (shapes.py)
        self._origin: dict[str, tuple[int, str]] = {}  # a forward copy's tensor -> (which copy, original)
        self._copied_nodes: dict[str, str] = {}  # a forward copy's node -> the original's name
        self._forward_maps: tuple[dict, dict] | None = None
        self._one_free_dim = free_dims(model) == 1
        for init in g.initializer:
            self.consts[init.name] = init
        for n in g.node:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                t = constant_tensor(n)
                if t is not None:
                    self.consts[n.output[0]] = t
        self._infer()
        self._static = set(self.consts)  # values known without the shape trials' sampling
        self._infer_trials()
        self._record_declared()
        self._met: list[tuple] = []  # unknown lengths broadcast against each other (dims.symbolic_dims)
        self._lost: set = set()  # input dims that reach where no expression follows them (dims.symbolic_dims)
        self._sym = symbolic_dims(model, self.shapes, self._met, self._lost)
        self._keep_declared_names()

    # ---------------------------------------------------------------- shapes and values
    def _infer(self) -> None:
        skel, fed, whole_slices, ml_done = skeleton(self.model), False, set(), set()
        while True:
            try:
                inferred = onnx.shape_inference.infer_shapes(skel, data_prop=True)
            except Exception:  # inference is a help, not a requirement: rules say what they miss
                if fed:
                    return
                inferred = self.model
            self._record(inferred.graph)
            if fix_pool_shapes(skel, self.shapes, self.types, self.shape_conflicts):
                fed = True
                continue
            if keep_whole_slice_dims(skel, self.shape_protos, self.types, self.consts, whole_slices):
                fed = True
                continue
            if ml_shapes(skel, self.shape_protos, self.types, self.consts, ml_done):
                fed = True
                continue
            # ONNX data propagation stops at Div, so `x.size(1) // 2` (ShuffleNet's chunk and
            # channel shuffle, exported with a dynamic batch axis) leaves the Reshapes and Slices
            # after it unknown: fold those integers here (the fully known ones become constants
            # for the rules), feed them back, and infer again while that adds anything.
            values = fold_ints(self.model.graph, self.shapes, self.consts)
            for name, v in values.items():
                if name not in self.consts and None not in v.flat:
                    dtype = helper.tensor_dtype_to_np_dtype(self.types.get(name, TensorProto.INT64))
                    self.consts[name] = numpy_helper.from_array(np.asarray(v, dtype=dtype), name)
            skel, new = feed_ints(skel, values, self.consts)
            if not new:
                return
            fed = True

    def _infer_trials(self) -> None:
        """Fill in the dims (and small constant values) that inference left unknown but that do
        not depend on the inputs' free dims (see shapes.py). Known dims are never changed."""
        outputs = [o for n in self.model.graph.node for o in n.output if o]
        if all(o in self.shapes and None not in self.shapes[o] for o in outputs):
            return
        shapes, values, self._trials = trial_shapes(skeleton(self.model))
        for name, found in shapes.items():
            old = self.shapes.get(name)
            if old is None:
                self.shapes[name] = found
            elif len(old) == len(found):
                self.shapes[name] = [d if d is not None else e for d, e in zip(old, found)]
                self._pin_symbolic(name, old)
                self._check_static(name, old)
        for name, v in values.items():
            if name not in self.consts:
                self.consts[name] = numpy_helper.from_array(v, name)
                self.types.setdefault(name, self.consts[name].data_type)

    def _check_static(self, name: str, inferred: list) -> None:
        """A length inference calls static that the shape trials (the graph's shapes worked out at
        two sizes of the inputs' free dims) find to differ is unknown: ONNX's data propagation is
        wrong there (a Gather from an Unsqueezed Shape gave a Reshape target of [-1, 1] where it
        is [-1, 4 N]), and rules and dims.py would take the wrong length for a fact."""
        trials = [dims.get(name) for dims in (self._trials or ())]
        proto = self.shape_protos.get(name)
        for i, d in enumerate(inferred):
            at = [t[i] for t in trials if t is not None and len(t) == len(inferred) and t[i] is not None]
            if d is not None and any(v != d for v in at):
                self.shapes[name][i] = None
                if proto is not None and len(proto.dim) == len(inferred):
                    unknown = onnx.TensorShapeProto()
                    unknown.CopyFrom(proto)
                    unknown.dim[i].Clear()
                    self.shape_protos[name] = proto = unknown

    def _pin_symbolic(self, name: str, old: list) -> None:
        """Dims the trials found static replace the symbolic ones inference gave, so that no rule
        (nor a declared gradient shape) takes them for the input's: ONNX's Slice-10 inference
        calls x[:, 0:1] of x [N, "T"] [N, "T"]."""
        proto = self.shape_protos.get(name)
        dims = self.shapes[name]
        if proto is None or len(proto.dim) != len(dims):
            return
        pinned = onnx.TensorShapeProto()
        pinned.CopyFrom(proto)
        for i, (was, now) in enumerate(zip(old, dims)):
            if was is None and now is not None:
                pinned.dim[i].Clear()
                pinned.dim[i].dim_value = now
        self.shape_protos[name] = pinned

    def _record_declared(self) -> None:
        """The model's own value_info and output shapes, only for tensors inference left without
        a shape (inferred shapes win: a stale declared one would size the backward wrongly)."""
        g = self.model.graph
        for vi in itertools.chain(g.value_info, g.output):
            t = vi.type.tensor_type
            if not vi.type.HasField("tensor_type"):
                continue
            self.types.setdefault(vi.name, t.elem_type)
            if t.HasField("shape") and self.shapes.get(vi.name) is None:
                self.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
                self.shape_protos.setdefault(vi.name, t.shape)

    def _keep_declared_names(self) -> None:
        """A graph output's dim that inference lost (a Reshape to [-1, 32]) but the model declares
        with the name of an input's dim ('batch') keeps that name: how the scores' batch axis is
        found in a time-major input [T, N, F] (README: "the one named like the scores' first"),
        where shape trials agree, with each free dim of its own size: a declaration can be wrong
        (a per-token Reshape to [-1, C] declared ['N', C] has N T rows). Input dims that the graph
        broadcasts against each other (dims.py's `met`: a padding mask [N', T'] named apart, against
        a time-major GRU's outputs) get one size there: with sizes of their own the broadcast fails
        and the trial has no say, so the declaration was never kept."""
        g = self.model.graph
        same = [(p[0][1:], q[0][1:]) for p, q in self._met
                if p[1] == q[1] and p[0][0] == q[0][0] == "in"]  # (base + k and base' + k: base = base')
        named = {d.dim_param: (vi.name, j) for vi in g.input for j, d in enumerate(vi.type.tensor_type.shape.dim)
                 if d.dim_param}
        trials = None
        for vi in g.output:
            have, declared = self.shape_protos.get(vi.name), vi.type.tensor_type.shape
            if have is None or vi.name in self.consts or len(have.dim) != len(declared.dim):
                continue
            lost = [i for i, (d, e) in enumerate(zip(have.dim, declared.dim)) if not d.HasField("dim_value")
                    and (not d.dim_param or d.dim_param.startswith("unk__")) and e.dim_param in named]
            if lost and trials is None:
                trials = [*(self._trials or ()), trial_with_distinct_dims(skeleton(self.model), same)]
            lost = [i for i in lost if all(_trial_dim(t, vi.name, i) is not None and _trial_dim(t, vi.name, i)
                                           == _trial_dim(t, *named[declared.dim[i].dim_param]) for t in trials)]
            if lost:
                shape = onnx.TensorShapeProto()
                shape.CopyFrom(have)
                for i in lost:
                    shape.dim[i].dim_param = declared.dim[i].dim_param
                self.shape_protos[vi.name] = shape

    def _record(self, g: onnx.GraphProto) -> None:
        for vi in itertools.chain(g.input, g.value_info, g.output):
            t = vi.type.tensor_type
            if not vi.type.HasField("tensor_type") or vi.name.endswith(FED_SUFFIX):
                continue
            self.types[vi.name] = t.elem_type
            if t.HasField("shape"):
                self.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
                self.shape_protos[vi.name] = t.shape
        for init in g.initializer:
            if not init.name.endswith(FED_SUFFIX):
                self.types[init.name] = init.data_type
                self.shapes[init.name] = list(init.dims)
        for name, t in self.consts.items():
            self.types.setdefault(name, t.data_type)
            self.shapes.setdefault(name, list(t.dims))

    def shape(self, name: str) -> list | None:
        return self.shapes.get(name)

    def dims_text(self, name: str) -> str:
        """A tensor's dims for messages: [?, 3, 224, 224]."""
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shapes.get(name) or []) + "]"

    def rank(self, name: str, node: onnx.NodeProto | None = None) -> int:
        s = self.shapes.get(name)
        if s is None:
            where = f" at {describe(node)}" if node is not None else ""
            raise UnsupportedModelError(f"the rank of tensor '{name}'{where} is unknown (shape inference failed)")
        return len(s)

    def static_shape(self, name: str, node: onnx.NodeProto, dims=None) -> list[int]:
        """Dims of `name` (or just the listed dims) that must be known; a clear error otherwise."""
        s = self.shapes.get(name)
        wanted = range(len(s)) if s is not None and dims is None else (dims or [])
        if s is None or any(s[i] is None for i in wanted):
            who = describe(node) if node is not None else "the backward graph"
            raise UnsupportedModelError(
                f"{who} needs a static shape for '{name}' (got {s}); export the model with fixed sizes"
            )
        return s

    def value(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (initializer or Constant output), else None."""
        if name in self.consts:
            return numpy_helper.to_array(self.consts[name])
        return None

    def static_value(self, name: str) -> np.ndarray | None:
        """The value of a tensor known for every input: a constant, or one folded from static dims
        (not from the shape trials, which sample the free dims: W % 8 is 6 at all four sizes)."""
        return self.value(name) if name in self._static else None

    def needs(self, name: str) -> bool:
        """Whether input tensor `name` lies on the differentiable path (rules skip the rest)."""
        return bool(name) and name in self.needed

    def is_float(self, name: str) -> bool:
        return self.types.get(name) in FLOAT_TYPES

    # ---------------------------------------------------------------- names and nodes
    def all_nodes(self) -> list[onnx.NodeProto]:
        """The model's nodes followed by the ones added so far (a valid topological order)."""
        return list(self.model.graph.node) + self.nodes

    def clone_forward(self, feeds: dict[str, str], replace: dict[str, str]) -> dict[str, str]:
        """Append a copy of every node that depends on a graph input, reading `feeds[input]`
        instead of each graph input and `replace[t]` instead of tensor t (whose producer's copy
        then writes to a dead name). Weights are shared, not copied.
        Returns the map from original tensor names to their copies."""
        rename = dict(feeds)
        rename.update(replace)
        clone = len({c for c, _ in self._origin.values()})
        for orig, new in rename.items():  # the stacked copies: same shape but for the batch
            self.types.setdefault(new, self.types.get(orig, 0))
            self._origin[new] = (clone, orig)
            if orig in self.shapes and self.shapes[orig]:
                self.shapes.setdefault(new, [None] + self.shapes[orig][1:])
        for node in list(self.model.graph.node):
            if not any(i in rename for i in reads(node) if i):  # (a Loop body may read the input)
                continue
            outs = []
            for o in node.output:
                new = self.fresh(f"{o.split('/')[-1] or 'out'}_copy") if o else ""
                if o and o not in replace:
                    rename[o] = new
                    self._origin[new] = (clone, o)
                    self.types[new] = self.types.get(o, 0)
                    if o in self.shapes:
                        self.shapes[new] = self.shapes[o]
                    if o in self.consts:
                        self.consts[new] = self.consts[o]
                outs.append(new)
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = self.fresh(node.op_type)
            self._copied_nodes[copy.name] = node.name or node.output[0]
            rename_reads(copy, rename)
            _forget_symbols(copy)
            del copy.output[:]
            copy.output.extend(outs)
            self.nodes.append(copy)
        return rename

    def forward_maps(self) -> tuple[dict, dict]:
        """(tensor -> the forward node that makes it, tensor -> the forward nodes that read it)."""
        if self._forward_maps is None:
            producer, consumers = {}, {}
            for n in self.model.graph.node:
                producer.update((o, n) for o in n.output)
                for i in n.input:
                    consumers.setdefault(i, []).append(n)
            self._forward_maps = (producer, consumers)
        return self._forward_maps

    def named_as_model(self, error: Exception, node: onnx.NodeProto) -> Exception:
        """`error`, raised at `node`; where that is a forward copy's node (SmoothGrad's and integrated
        gradients' batched copies), the same error naming the model's own nodes and tensors."""
        if node.name not in self._copied_nodes:
            return error
        names = dict(self._copied_nodes)
        names.update((copy, orig) for copy, (_, orig) in self._origin.items())
        message = str(error)
        for copy in sorted(names, key=len, reverse=True):
            message = message.replace(f"'{copy}'", f"'{names[copy]}'")
        return type(error)(message)

    def taken(self, name: str) -> bool:
        """Whether `name` already names a tensor or node of the model (or one added)."""
        return name in self._used

    def fresh(self, hint: str) -> str:
        while True:
            name = f"onnxattr/{hint}_{next(self._counter)}"
            if name not in self._used:
                self._used.add(name)
                return name

    def op(self, op_type: str, inputs, outputs: int = 1, hint: str | None = None, **kwargs):
        """Append a node; returns its output name (or the list of names when outputs > 1)."""
        outs = [self.fresh(hint or op_type.lower()) for _ in range(outputs)]
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        node = helper.make_node(op_type, list(inputs), outs, name=self.fresh(op_type), **kwargs)
        self.nodes.append(node)
        return outs[0] if outputs == 1 else outs

    def op_like(self, node: onnx.NodeProto, inputs, outputs: int) -> list[str]:
        """A copy of a forward node (same type and attributes) on new inputs/outputs."""
        outs = [self.fresh(node.op_type.lower()) for _ in range(outputs)]
        copy = helper.make_node(node.op_type, list(inputs), outs, name=self.fresh(node.op_type))
        copy.attribute.extend(node.attribute)
        self.nodes.append(copy)
        return outs

    def const(self, value, dtype=None, hint: str = "const") -> str:
        """A Constant node holding `value`; equal constants are emitted once and shared."""
        arr = np.asarray(value, dtype=dtype if dtype is not None else self.np_dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key in self._const_cache:
            return self._const_cache[key]
        name = self.fresh(hint)
        self._const_cache[key] = name
        t = numpy_helper.from_array(arr, name)
        if self.opset < 9 and arr.dtype.kind not in "fc":
            # Constant-1 holds only float tensors: store as double and Cast (exact below 2**53).
            as_double = arr.astype(np.float64)
            if not np.array_equal(as_double.astype(arr.dtype), arr):
                raise UnsupportedModelError(f"constant {arr.tolist()} is not representable at opset {self.opset}")
            raw = self.fresh(hint)
            self.nodes.append(helper.make_node("Constant", [], [raw], name=self.fresh("Constant"),
                                               value=numpy_helper.from_array(as_double, raw)))
            to = t.data_type if self.opset >= 6 else TensorProto.DataType.Name(t.data_type)  # Cast-1: a string
            self.nodes.append(helper.make_node("Cast", [raw], [name], name=self.fresh("Cast"), to=to))
        else:
            self.nodes.append(helper.make_node("Constant", [], [name], name=self.fresh("Constant"), value=t))
        self.consts[name] = t
        self.types[name] = t.data_type
        self.shapes[name] = list(arr.shape)
        return name

    def ints(self, values) -> str:
        return self.const(values, dtype=np.int64, hint="ints")

    def scalar(self, value: float) -> str:
        return self.const(np.asarray(value, dtype=self.np_dtype), hint="scalar")

    @contextlib.contextmanager
    def float32(self, *tensors):
        """In a float16 model: `tensors` cast to float32 and, inside the block, float32 as the
        float type (scalar, mask and where make float32), with a cast back for the results; in
        other models the tensors unchanged. For derivatives whose float16 intermediates overflow
        or cancel where the forward and the gradient are finite."""
        if self.np_dtype != np.float16:
            yield list(tensors), (lambda t: t)
            return
        saved = self.dtype
        wide = [self.op("Cast", [t], to=TensorProto.FLOAT) for t in tensors]
        self.unbounded.update(w for t, w in zip(tensors, wide) if t in self.unbounded)
        self.set_dtype(TensorProto.FLOAT)
        try:
            yield wide, (lambda t: self.op("Cast", [t], to=saved))
        finally:
            self.set_dtype(saved)

    # ---------------------------------------------------------------- opset-aware forms
    def unsqueeze(self, x: str, axes) -> str:
        if self.opset >= 13:
            return self.op("Unsqueeze", [x, self.ints(axes)])
        return self.op("Unsqueeze", [x], axes=list(axes))

    def squeeze(self, x: str, axes) -> str:
        if self.opset >= 13:
            return self.op("Squeeze", [x, self.ints(axes)])
        return self.op("Squeeze", [x], axes=list(axes))

    def reduce(self, op_type: str, x: str, axes, keepdims: int = 1) -> str:
        axes = list(axes)
        if (op_type == "ReduceSum" and self.opset >= 13) or self.opset >= 18:
            return self.op(op_type, [x, self.ints(axes)], keepdims=keepdims)
        return self.op(op_type, [x], axes=axes, keepdims=keepdims)

    def slice(self, x: str, starts, ends, axes, steps=None) -> str:
        if self.opset >= 10:
            ins = [x, self.ints(starts), self.ints(ends), self.ints(axes)]
            if steps is not None:
                ins.append(self.ints(steps))
            return self.op("Slice", ins)
        if steps is not None and any(s != 1 for s in steps):
            raise UnsupportedModelError(f"Slice with steps needs opset >= 10 (model has {self.opset})")
        return self.op("Slice", [x], starts=list(starts), ends=list(ends), axes=list(axes))

    def pad(self, x: str, pads) -> str:
        """Zero padding; `pads` is [begin_0..begin_r, end_0..end_r]."""
        if not any(pads):
            return x
        if self.opset >= 11:
            out = self.op("Pad", [x, self.ints(pads)])
        elif self.opset >= 2:
            out = self.op("Pad", [x], pads=list(pads))
        else:
            out = self.op("Pad", [x], paddings=list(pads))
        self._padded[out] = (x, [int(p) for p in pads])
        return out

    def crop(self, x: str, begin: list[int], size: list[int], length: list[int]) -> str:
        """x[:, :, begin_i : begin_i + size_i] along the spatial axes (length_i long), with zeros
        appended first where the window runs past the end."""
        n = len(begin)
        short = [max(0, begin[i] + size[i] - length[i]) for i in range(n)]
        x = self.pad(x, [0] * (n + 2) + [0, 0] + short)
        return self.slice(x, begin, [begin[i] + size[i] for i in range(n)], list(range(2, 2 + n)))

    def split(self, x: str, sizes, axis: int) -> list[str]:
        if len(sizes) == 1:
            return [x]
        if self.opset >= 13:
            return self.op("Split", [x, self.ints(sizes)], outputs=len(sizes), axis=axis)
        return self.op("Split", [x], outputs=len(sizes), axis=axis, split=list(sizes))

    def scatter_add(self, op_type: str, data: str, indices: str, updates: str, **attrs) -> str:
        """ScatterElements or ScatterND with reduction 'add'. ONNX Runtime adds in float and
        double only: half-precision tensors are added in float32 and cast back."""
        if self.dtype in (TensorProto.FLOAT, TensorProto.DOUBLE):
            return self.op(op_type, [data, indices, updates], reduction="add", **attrs)
        wide = [self.op("Cast", [t], to=TensorProto.FLOAT) for t in (data, updates)]
        return self.op("Cast", [self.op(op_type, [wide[0], indices, wide[1]], reduction="add", **attrs)], to=self.dtype)

    def zeros(self, shape: str) -> str:
        """Zeros of the model's float type, of the int64 shape tensor `shape` (opset 9)."""
        return self.op("ConstantOfShape", [shape], value=numpy_helper.from_array(np.zeros(1, dtype=self.np_dtype)))

    def zeros_like(self, x: str) -> str:
        if self.opset >= 9:
            return self.zeros(self.shape_of(x))
        if self.opset >= 8:
            return self.op("Expand", [self.const(np.zeros((), self.np_dtype)), self.shape_of(x)])
        # No Expand before opset 8: a constant when the shape is static, else 0 * x (x is finite
        # wherever a gradient is worth computing; a dynamic batch axis is the usual reason).
        s = self.shapes.get(x)
        if s is not None and None not in s:
            return self.const(np.zeros(s, self.np_dtype))
        self.rank(x)  # a clear error when not even the rank is known
        return self.op("Mul", [x, self.scalar(0.0)])

    def expand_like(self, t: str, x: str) -> str:
        """`t` broadcast to the shape of `x` (which it must broadcast to)."""
        if self.opset >= 8:
            return self.op("Expand", [t, self.shape_of(x)])
        return self.op("Add", [t, self.zeros_like(x)])

    def divide_by_count(self, g: str, count) -> str:
        """g / count, for a count of elements (a mean's): a number, or an int64 scalar tensor. In
        float16 a count past its largest value, 65504 (a mean over 256 x 256), would be inf and
        the gradient 0: it is divided out in two steps, by a power of two then the rest, or for a
        run-time count by its square root (taken in float32) twice."""
        if not isinstance(count, str):
            if self.np_dtype != np.float16 or count <= 65504:
                return self.op("Div", [g, self.scalar(float(count))])
            k = 2.0 ** int(np.ceil(np.log2(count / 65504)))
            return self.op("Div", [self.op("Div", [g, self.scalar(k)]), self.scalar(count / k)])
        if self.np_dtype != np.float16:
            return self.op("Div", [g, self.op("Cast", [count], to=self.dtype)])
        root = self.op("Cast", [self.op("Sqrt", [self.op("Cast", [count], to=TensorProto.FLOAT)])], to=self.dtype)
        return self.op("Div", [self.op("Div", [g, root]), root])

    def equal(self, a: str, b: str) -> str:
        """a == b as a bool tensor; Equal takes float inputs only from opset 11. (A tensor the
        backward made has no recorded type: float, unless the other operand's says otherwise.)"""
        known = self.types.get(a, self.types.get(b))
        if self.opset >= 11 or (known is not None and known not in FLOAT_TYPES):
            return self.op("Equal", [a, b])
        return self.op("Not", [self.op("Or", [self.op("Less", [a, b]), self.op("Greater", [a, b])])])

    def where(self, cond: str, x: str, y: str) -> str:
        """Where(cond, x, y); before opset 9 (no Where) as x * m + y * (1 - m) with m = mask(cond)."""
        if self.opset >= 9:
            return self.op("Where", [cond, x, y])
        m = self.mask(cond)
        return self.op("Add", [self.op("Mul", [x, m]), self.op("Mul", [y, self.op("Sub", [self.scalar(1.0), m])])])

    def sign(self, x: str) -> str:
        """Sign(x); before opset 9 (no Sign) as mask(x > 0) - mask(x < 0)."""
        if self.opset >= 9:
            return self.op("Sign", [x])
        zero = self.scalar(0.0)
        return self.op("Sub", [self.mask(self.op("Greater", [x, zero])), self.mask(self.op("Less", [x, zero]))])

    def mask(self, condition: str) -> str:
        """A boolean tensor as 0/1 in the float dtype."""
        return self.op("Cast", [condition], to=self.dtype)

    def masked(self, g: str, mask: str) -> str:
        """g where the 0/1 `mask` is 1, else 0: a product, unless g may hold +-inf (below a
        sqrt, an acos, ...: backward.may_blow_up); then a selection, so that a masked-out inf
        gives 0 rather than inf * 0 = NaN, as PyTorch's threshold and clamp backward do (not
        before opset 9, which has no Where)."""
        if g in self.unbounded and self.opset >= 9:
            return self.op("Where", [self.op("Cast", [mask], to=TensorProto.BOOL), g, self.scalar(0.0)])
        return self.op("Mul", [g, mask])

    def adjoint_along(self, g: str, m: np.ndarray, axis: int, rank: int) -> str:
        """For y = m @ x along `axis` (m [len_y, len_x], a constant): the VJP m^T @ g there, as
        one MatMul (and two Transposes unless `axis` is one of the last two)."""
        if axis == rank - 1:
            return self.op("MatMul", [g, self.const(m)])
        if axis == rank - 2:
            return self.op("MatMul", [self.const(np.ascontiguousarray(m.T)), g])
        perm = [i for i in range(rank) if i != axis] + [axis]
        moved = self.op("MatMul", [self.op("Transpose", [g], perm=perm), self.const(m)])
        return self.op("Transpose", [moved], perm=[int(i) for i in np.argsort(perm)])

    def annotate(self, name: str, like: str) -> None:
        """Declare that added tensor `name` has the (inferred) shape of `like`, symbolic dims
        included: ONNX Runtime then sees equal shapes and keeps the backward's element-wise ops
        in its blocked NCHWc layout instead of reordering around each of them."""
        shape = self.shape_protos.get(like)
        if shape is None or name in self.value_info or name == like or not self.is_float(like):
            return
        vi = helper.make_tensor_value_info(name, self.types[like], None)
        vi.type.tensor_type.shape.CopyFrom(shape)
        self.value_info[name] = vi

    def blocked(self, like: str) -> bool:
        """Whether tensors shaped like `like` suit `channel_affine`'s depthwise Conv form: 4-D
        float32 [N, C, H, W] with a known C, in a graph tuned for ONNX Runtime's CPU provider
        (on CUDA, plain element-wise ops ran faster: see tune_for)."""
        s = self.shapes.get(like)
        return self.tune_for == "cpu" and s is not None and len(s) == 4 and s[1] is not None and self.dtype == TensorProto.FLOAT

    def channel_affine(self, t: str, scale: float, like: str, bias: float = 0.0) -> str:
        """t * scale + bias (t shaped like `like`, one rounding), as a depthwise 1x1 Conv where
        `blocked(like)`: ONNX Runtime runs that in its blocked NCHWc layout, so the backward's Conv
        chain is not interrupted by layout reorders around it (scale 1 is a pure anchor)."""
        if not self.blocked(like):
            out = t if scale == 1.0 else self.op("Mul", [t, self.scalar(scale)])
            return out if bias == 0.0 else self.op("Add", [out, self.scalar(bias)])
        c = self.shapes[like][1]
        ins = [t, self.const(np.full([c, 1, 1, 1], scale, dtype=self.np_dtype), hint="channel_scale")]
        if bias != 0.0:
            ins.append(self.const(np.full([c], bias, dtype=self.np_dtype), hint="channel_bias"))
        out = self.op("Conv", ins, group=c, kernel_shape=[1, 1])
        self.annotate(out, like=like)
        return out

    def step(self, t: str, like: str, least: float = 2.0 ** -149) -> str:
        """1[t > 0] for t >= 0, exactly, where positive t is known to be >= `least`.
        Blocked 4-D float32: HardSigmoid(t; alpha 2**127, beta 0) = min(1, t * 2**127), applied
        twice when t may be subnormal (2**-149 * 2**127 = 2**-22, lifted past 1 by the second):
        element-wise ops that ONNX Runtime keeps in its NCHWc layout (ResNet-50 saliency at batch
        8: 552.8 -> 537.4 ms against the same scaling as depthwise 1x1 Convs with a fused Clip;
        MobileNetV2 guided 121.1 -> 112.3 ms). Else Ceil(min(t, 1)), which ran faster in ONNX
        Runtime's CPU provider than Sign or Greater + Cast. Tuned for CUDA: Sign(t), one kernel
        (ResNet-50 guided on an H100: 1.84x the forward at batch 1, against 1.99x with
        Ceil(min(t, 1)) and 2.08x with Greater + Cast)."""
        if self.tune_for == "cuda" and self.opset >= 9:
            out = self.op("Sign", [t])
        elif self.blocked(like) and self.opset >= 6:
            out = self.op("HardSigmoid", [t], alpha=2.0 ** 127, beta=0.0)
            if least < 2.0 ** -127:
                out = self.op("HardSigmoid", [out], alpha=2.0 ** 127, beta=0.0)
        elif self.opset >= 12 or (self.opset == 11 and self.dtype != TensorProto.DOUBLE):
            out = self.op("Ceil", [self.op("Clip", [t, "", self.scalar(1.0)])])
        elif self.dtype == TensorProto.DOUBLE:  # ONNX Runtime has no double Clip-6 nor Clip-11
            out = self.mask(self.op("Greater", [t, self.scalar(0.0)]))
        else:
            out = self.op("Ceil", [self.op("Clip", [t], max=1.0)])
        self.annotate(out, like=like)
        return out

    def shape_with(self, w: str, axis: int, middle: list, lead: list = ()) -> str:
        """Shape(w) with its dim `axis` replaced by the ints `middle`, after the ints `lead`."""
        end = np.iinfo(np.int64).max
        if axis == 0:
            head = self.ints([*lead, *middle])
            return self.op("Concat", [head, self.slice(self.shape_of(w), [1], [end], [0])], axis=0)
        shape = self.shape_of(w)
        parts = [self.slice(shape, [0], [axis], [0]), self.ints(list(middle)),
                 self.slice(shape, [axis + 1], [end], [0])]
        return self.op("Concat", ([self.ints(list(lead))] if lead else []) + parts, axis=0)

    def shape_of(self, x: str) -> str:
        """Shape(x), one node per tensor. For a tensor of the forward graph the node goes before
        every other added node, so the backward reads only the small shape: ONNX Runtime can
        free x after its last forward use instead of keeping it alive until the backward."""
        if x not in self._shapes_of:
            out = self.fresh("shape")
            node = helper.make_node("Shape", [x], [out], name=self.fresh("Shape"))
            if x in self._forward:
                self.nodes.insert(self._early, node)
                self._early += 1
            else:
                self.nodes.append(node)
            self._shapes_of[x] = out
        return self._shapes_of[x]

    def reshape_like(self, g: str, x: str) -> str:
        """`g` reshaped to the shape of `x`: a constant target when at most one dim is unknown."""
        s = self.shapes.get(x)
        if s is not None and None not in s and 0 in s:  # x is empty, and so is its gradient (a 0 in a
            return self.const(np.zeros(s, self.np_dtype))  # Reshape target would copy g's dim instead)
        if s is not None and s.count(None) <= 1 and 0 not in s and self.opset >= 6:  # int constants need Cast-6
            return self.op("Reshape", [g, self.ints([-1 if d is None else d for d in s])])
        return self.op("Reshape", [g, self.shape_of(x)])

    def add_all(self, terms: list[str], like: str | None = None) -> str:
        """The sum of gradient terms for tensor `like`."""
        if like is not None and len(terms) > 1:
            terms = self._join_pads(terms, like)
        if len(terms) == 1:
            return terms[0]
        if len(terms) == 2:
            return self.op("Add", terms)
        return self.op("Sum", terms)

    def _join_pads(self, terms: list[str], like: str) -> list[str]:
        """Terms that zero-pad pieces lying side by side along one axis (the gradients of Gathers
        or Slices that split a tensor, e.g. q, k and v out of one projection) add up to the
        pieces' concatenation, padded once: one Concat instead of a full-size Pad per piece and
        their Sum."""
        full = self.shapes.get(like)
        if full is None:
            return terms
        rank = len(full)
        groups: dict[int, list[tuple[int, int, str, str]]] = {}  # axis -> (begin, length, term, piece)
        for t in terms:
            x, pads = self._padded.get(t, (None, None))
            if x is None or len(pads) != 2 * rank or min(pads) < 0:
                continue
            axes = [i for i in range(rank) if pads[i] or pads[rank + i]]
            if len(axes) == 1 and full[axes[0]] is not None:
                ax = axes[0]
                groups.setdefault(ax, []).append((pads[ax], full[ax] - pads[ax] - pads[rank + ax], t, x))
        for ax, pieces in groups.items():
            pieces.sort()
            if len(pieces) < 2 or any(b0 + n0 != b1 for (b0, n0, _, _), (b1, _, _, _) in zip(pieces, pieces[1:])):
                continue
            joined = self.op("Concat", [x for _, _, _, x in pieces], axis=ax)
            pads = [0] * (2 * rank)
            pads[ax], pads[rank + ax] = pieces[0][0], full[ax] - pieces[-1][0] - pieces[-1][1]
            used = {t for _, _, t, _ in pieces}
            terms = [t for t in terms if t not in used] + [self.pad(joined, pads)]
        return terms

    def same_dim(self, x: str, i: int, y: str, j: int, names: bool = True) -> bool:
        """Whether unknown dim i of x and dim j of y are the same size in every run: the same
        dim_param (unless `names` is False), the same expression of the inputs' dims (dims.py),
        or equal in both shape trials when the inputs have one free dim only (with several, the
        trials give them all one size, so equal there proves nothing)."""
        pair = self._originals(x, y)
        if pair is None:
            return False
        x, y = pair
        px, py = self.shape_protos.get(x), self.shape_protos.get(y)
        if names and px is not None and py is not None:
            a, c = px.dim[i], py.dim[j]
            if a.dim_param and a.dim_param == c.dim_param:
                return True
        if dims.same(self._sym, x, i, y, j):
            return True
        if not self._one_free_dim or self._trials is None:
            return False
        pairs = self._trial_dims(x, i, y, j)
        return len(pairs) == len(self._trials) and all(a is not None and a == c for a, c in pairs)

    def _originals(self, x: str, y: str) -> tuple[str, str] | None:
        """x and y, or the tensors they copy when both lie in one forward copy (clone_forward:
        there dims relate as in the original, its batch k times the original's); None when they
        lie in different copies, or one in a copy and one not."""
        (cx, ox), (cy, oy) = self._origin.get(x, (None, x)), self._origin.get(y, (None, y))
        return (ox, oy) if cx == cy else None

    def _trial_dims(self, x: str, i: int, y: str, j: int) -> list[tuple]:
        """(dim i of x, dim j of y) in each shape trial that has both."""
        pair = self._originals(x, y)
        if pair is None:
            return []
        x, y = pair
        return [(t[x][i], t[y][j]) for t in self._trials or ()
                if x in t and y in t and len(t[x]) > i and len(t[y]) > j]

    def set_dtype(self, dtype: int) -> None:
        """The float type of the backward (before any node is added)."""
        self.dtype, self.np_dtype = dtype, helper.tensor_dtype_to_np_dtype(dtype)

    def meet(self, x: str, i: int, y: str, j: int) -> bool:
        """Whether unknown dim i of x and dim j of y are broadcast against each other somewhere on
        the way (through other unknown lengths too): where the model runs, each is the other or 1."""
        c = self._sym.get(y)
        if c is None or not (0 <= j < len(c)) or c[j] is None:
            return False
        return c[j] in self._linked(x, i)

    def untraced(self, x: str, i: int, y: str, j: int) -> bool:
        """Whether unknown dim i of the input x may be dim j of the input y where nothing here follows
        it: it, or a length broadcast against it, reaches a node whose outputs dims.py does not
        follow (what it meets there is not known), and it is not broadcast against another of y's
        dims (a positional table [P, D] added to x [N, T, D]: P is T, or 1)."""
        linked, c = self._linked(x, i), self._sym.get(y) or []
        if any(e in linked for k, e in enumerate(c) if k != j and e is not None and not isinstance(e, int)):
            return False
        return any(base in self._lost for e in linked for base in dims.input_dims(e))

    def _linked(self, x: str, i: int) -> set:
        """Dim i of x's expression and those broadcast against it, directly or through others."""
        a = self._sym.get(x)
        if a is None or not (0 <= i < len(a)) or a[i] is None:
            return set()
        linked, todo = {a[i]}, [a[i]]
        while todo:
            e = todo.pop()
            for p, q in self._met:
                for u, v in ((p, q), (q, p)):
                    if u == e and v not in linked:
                        linked.add(v)
                        todo.append(v)
        return linked

    def differ(self, x: str, i: int, y: str, j: int) -> bool:
        """Whether dim i of x and dim j of y are known to differ: both static, or in a trial."""
        sx, sy = self.shapes.get(x), self.shapes.get(y)
        if sx and sy and len(sx) > i and len(sy) > j and sx[i] is not None and sy[j] is not None:
            return sx[i] != sy[j]
        return any(None not in p and p[0] != p[1] for p in self._trial_dims(x, i, y, j))

    def unbroadcast(self, g: str, x: str, y: str, node: onnx.NodeProto, dims=None, lead: int | None = None) -> str:
        """Sum gradient `g` (shaped like the broadcast result `y`) back to the shape of `x`.
        Axes where x's size is unknown and may be 1 while y's is not are decided at run time.
        `dims` limits the comparison to those axes of x (a MatMul's batch axes), x's axis i
        lining up with y's axis lead + i (by default the ranks' difference)."""
        sx, sy = self.shapes.get(x), self.shapes.get(y)
        if dims is None and sx is not None and sx == sy and None not in sx:
            return g
        rx = self.rank(x, node)
        lead = self.rank(y, node) - rx if lead is None else lead
        axes, unsure = list(range(lead)), []
        for i in range(rx) if dims is None else dims:
            dx, dy = sx[i], sy[lead + i] if sy is not None and lead + i < len(sy) else None
            if dx == 1 and dy != 1:
                axes.append(lead + i)
            elif dx is None and dy != 1 and not (dy is None and self.same_dim(x, i, y, lead + i)):
                unsure.append(i)
        if unsure:
            if self.opset < 13:  # ReduceSum takes its axes as an attribute: they must be known
                raise UnsupportedModelError(
                    f"{describe(node)}: cannot tell whether '{x}' broadcasts along axis {unsure[0]} (unknown size)")
            out = self._reduce_where_broadcast(g, x, y, lead, axes, unsure)
        elif not axes:
            return g
        else:
            out = self.reduce("ReduceSum", g, axes, keepdims=1)
        if lead:
            out = self.reshape_like(out, x)
        return out

    def _reduce_where_broadcast(self, g: str, x: str, y: str, lead: int, axes: list[int], unsure: list[int]) -> str:
        """ReduceSum of g over `axes` and over each axis lead + i (i in `unsure`) where, in this
        run, x has size 1 and y does not."""
        dx = self.op("Gather", [self.shape_of(x), self.ints(unsure)], axis=0)
        dy = self.op("Gather", [self.shape_of(y), self.ints([lead + i for i in unsure])], axis=0)
        one = self.ints(1)
        spread = self.op("And", [self.op("Equal", [dx, one]), self.op("Not", [self.op("Equal", [dy, one])])])
        chosen = self.op("Compress", [self.ints([lead + i for i in unsure]), spread], axis=0)
        if axes:
            chosen = self.op("Concat", [self.ints(axes), chosen], axis=0)
        return self.op("ReduceSum", [g, chosen], keepdims=1, noop_with_empty_axes=1)


class Subgraph:
    """The nodes of a subgraph being written (a Scan or Loop body); tensor and node names come
    from the Builder, so they are unique in the whole model (a body may read outer tensors)."""

    def __init__(self, b: Builder):
        self.b = b
        self.nodes: list[onnx.NodeProto] = []

    def op(self, op_type: str, inputs, outputs: int = 1, out: str | None = None, **kwargs):
        """Append a node; returns its output name (`out` if given), or the list of names."""
        outs = [out] if out else [self.b.fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.b.fresh(op_type), **kwargs))
        return outs[0] if len(outs) == 1 else outs


def _forget_symbols(node: onnx.NodeProto) -> None:
    """Unknown lengths in place of the symbols a node's subgraphs declare (a Loop body's state
    [unk__1, 256], where unk__1 may be the model's batch): a copy runs on SmoothGrad's and
    integrated gradients' stacked rows, another length."""
    for a in node.attribute:
        for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
            for vi in itertools.chain(g.input, g.output, g.value_info):
                for d in vi.type.tensor_type.shape.dim:
                    if d.HasField("dim_param"):
                        d.Clear()
            for n in g.node:
                _forget_symbols(n)
