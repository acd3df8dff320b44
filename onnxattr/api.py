"""Public functions: build the attribution model, run it, report op coverage."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from pathlib import Path

import onnx
import onnx.inliner  # noqa: F401  (a submodule `import onnx` does not load)
from onnx import TensorProto, helper

from .backward import build_backward, differentiable_path, inside, prune, refuse_missing_rules, refuse_shape_conflicts
from .errors import ModelLoadError, NotAClassifierError, OnnxAttrError, OptionError, UnsupportedModelError
from .graph import Builder
from .contrib import expand_contrib
from .functions import expand_functions
from .inline import inline_constant_ifs
from .protos import FLOAT_TYPES, describe, structure_error
from .io import iter_tensors, load_external_data
from .wire import read_model
from .methods import METHODS, get_method
from .vjp import rule_key
from .layout import batch_axis, cam_axes, input_is_nhwc
from .recipes import ALL_METHODS, CAM_METHODS, Context, Options, build

ATTRIBUTION = "attribution"
TARGET = "target"
ADDED_OUTPUTS = (ATTRIBUTION, TARGET, "completeness_gap", "cam")  # (and TARGET as an input)
BATCH_AXIS, WRT_BATCH_AXIS = "onnxattr.batch_axis", "onnxattr.wrt_batch_axis"  # metadata, where not 0


def load_model(model) -> onnx.ModelProto:
    """A ModelProto from a path or a ModelProto (local functions inlined; input never changed).

    From a path, external data is read only after every tensor's location has been checked to
    stay inside the model's folder (see onnxattr.io); a ModelProto must already hold its data.
    Raises ModelLoadError (one line, naming the file or tensor) for anything unreadable.
    """
    if isinstance(model, onnx.ModelProto):
        proto = model
        for t in iter_tensors(proto):
            if t.data_location == TensorProto.EXTERNAL:
                raise ModelLoadError(f"tensor '{t.name}' refers to external data that is not loaded: pass the "
                                     f"model's path, or onnx.load it from its folder")
        where = "the model"
    else:
        try:
            path = Path(os.fspath(model))
        except TypeError:
            raise ModelLoadError(f"expected a path or an onnx.ModelProto, got {type(model).__name__}") from None
        if not path.is_file():
            why = "is a folder" if path.is_dir() else "does not exist" if not path.exists() else "is not a regular file"
            raise ModelLoadError(f"'{path}' {why}")
        try:
            proto = read_model(str(path))  # field by field: never the file's bytes and the model at once
        except Exception as e:  # protobuf raises several types for corrupt bytes
            raise ModelLoadError(_one_line(f"'{path}' is not an ONNX model, or a truncated or corrupt one "
                                          f"({type(e).__name__}: {e})")) from None
        where = f"'{path}'"
        if not proto.HasField("graph") and not proto.opset_import:
            raise ModelLoadError(f"{where} is not an ONNX model (no graph, no opset)")
        load_external_data(proto, path.parent)
    if not proto.graph.node:
        raise ModelLoadError(f"{where} has an empty graph (no nodes)")
    if proto.functions:
        try:
            proto = onnx.inliner.inline_local_functions(proto)
        except Exception as e:
            raise ModelLoadError(_one_line(f"{where}: cannot inline its local functions ({type(e).__name__}: {e})")) from None
    why = structure_error(proto.graph)
    if why:
        raise ModelLoadError(_one_line(f"{where} is not a valid ONNX graph: {why}"))
    return proto


def _one_line(text: str, limit: int = 400) -> str:
    line = text.strip().splitlines()[0] if text.strip() else text
    return line if len(line) <= limit else line[:limit - 3] + "..."


def float_inputs(model: onnx.ModelProto) -> list[str]:
    """The model's floating-point graph inputs (not initializers, nor the `target` an exported
    model adds), in order."""
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input
            if i.name not in inits and i.name != TARGET and i.type.tensor_type.elem_type in FLOAT_TYPES]


def _float_input(model: onnx.ModelProto, name: str | None, allow_int: bool = False) -> onnx.ValueInfoProto:
    """The input to attribute to (or, with `allow_int`, whose batch the --wrt tensor follows:
    a text model's token ids when no input is float)."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    for vi in inputs:
        if (name is None or vi.name == name) and vi.type.tensor_type.elem_type in FLOAT_TYPES:
            return vi
    if allow_int:
        for vi in inputs:
            if (name is None or vi.name == name) and vi.type.HasField("tensor_type"):
                return vi
    if name is not None:
        raise NotAClassifierError(f"'{name}' is not a floating-point input of the model "
                                  f"(inputs: {', '.join(i.name for i in inputs)})")
    raise NotAClassifierError("the model has no floating-point input to attribute to")


def _scores(b: Builder, name: str | None) -> str:
    outputs = [o.name for o in b.model.graph.output]
    if name is not None:
        if name not in b.types:
            producer = b.forward_maps()[0].get(name)
            if producer is not None and producer.op_type == "ZipMap":
                raise NotAClassifierError(f"--output '{name}' is ZipMap's sequence of maps, not a tensor: pass --output "
                                          f"{producer.input[0]} (the probability tensor [N, C])")
            if producer is not None:  # a tensor shape inference could not follow (ai.onnx.ml ops)
                raise UnsupportedModelError(f"--output '{name}' has no known type or shape: it comes from "
                                            f"{describe(producer)} (domain '{producer.domain or 'ai.onnx'}'), which "
                                            "ONNX shape inference cannot follow")
            raise NotAClassifierError(f"--output '{name}' is not a tensor of the model (outputs: {', '.join(outputs)})")
        if not b.is_float(name) or len(b.shapes.get(name, [])) != 2:
            raise NotAClassifierError(f"--output '{name}' is not a rank-2 floating-point tensor [N, C]")
        return name
    for o in outputs:
        if b.is_float(o) and len(b.shapes.get(o, [])) == 2:
            return o
    # skl2onnx's default ZipMap turns the probabilities into a sequence of maps: point at its input.
    zipped = _zipped(b)
    how = (f"the probabilities go through ZipMap (a sequence of maps): pass --output {zipped} "
           "(the probability tensor [N, C])" if zipped else "name one with --output")
    raise NotAClassifierError(
        f"no rank-2 floating-point output [N, C] among the outputs ({', '.join(outputs)}); {how}"
    )


def _zipped(b: Builder) -> str | None:
    """The input of the first ZipMap that writes a graph output (skl2onnx's probabilities), if any."""
    outputs = {o.name for o in b.model.graph.output}
    return next((n.input[0] for n in b.model.graph.node if n.op_type == "ZipMap" and n.output[0] in outputs), None)


def _left_unknown(b: Builder, name: str) -> str | None:
    """For a tensor `name` that a node writes and whose type, or float rank, shape inference did
    not find (as an op without a gradient rule before it leaves it: skl2onnx's SVMClassifier,
    TreeEnsembleClassifier, a custom op), the tensor whose path to check for missing rules:
    `name`, or the input of the ZipMap that writes it; else None (a known type or rank that is
    not [N, C] float is the cause to tell)."""
    producer = b.forward_maps()[0].get(name)
    if producer is None or (name in b.types and (not b.is_float(name) or b.shapes.get(name) is not None)):
        return None
    return producer.input[0] if producer.op_type == "ZipMap" else name


def _value_info(name: str, elem_type: int, dims) -> onnx.ValueInfoProto:
    """A graph output description; dims may hold TensorShapeProto.Dimension, ints, or None."""
    vi = helper.make_tensor_value_info(name, elem_type, None)
    shape = vi.type.tensor_type.shape
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, onnx.TensorShapeProto.Dimension):
            dim.CopyFrom(d)
        elif d is not None:
            dim.dim_value = d
    return vi


def _builder(model: onnx.ModelProto, dtype: int, tune_for: str = "cpu", expanded: dict | None = None) -> Builder:
    """The Builder of `model`, after expanding (in place) ONNX Runtime's fused ops into standard
    ops (contrib.py) and the ops without a rule that ONNX defines as functions (functions.py; what
    came from where is added to `expanded`) and inlining the Ifs whose condition is known from
    static dims (inline.py)."""
    expanded = expanded if expanded is not None else {}
    expanded.update(expand_contrib(model))
    expanded.update(expand_functions(model))
    b = Builder(model, dtype, tune_for=tune_for)
    for _ in range(8):  # an If in a taken branch, or fed by another If, is known one round later
        if not inline_constant_ifs(model.graph, b.static_value):
            break
        b = Builder(model, dtype, tune_for=tune_for)
    return b


def _check_opset(b: Builder) -> None:
    if b.opset > onnx.defs.onnx_opset_version():  # (ONNX Runtime would refuse it too; shape inference cannot follow)
        raise UnsupportedModelError(f"opset {b.opset} is newer than this onnx {onnx.__version__} knows "
                                    f"({onnx.defs.onnx_opset_version()}): update onnx, or export at an older opset")
    if b.opset < 7:  # measured: even an Identity classifier's attribution model failed to load
        raise UnsupportedModelError(
            f"opset {b.opset}: the attribution graph needs ops of opset 7 or later (ONNX Runtime runs "
            "none of its older Mul, Add, Sub); convert the model first (onnx.version_converter)")


def attribution_model(model, method: str = "saliency", output: str | None = None, input: str | None = None,
                      target: str = "input", relu_like: bool = False, wrt: str | None = None,
                      tune_for: str = "cpu", **options) -> onnx.ModelProto:
    """Return a new ONNX model computing the original outputs plus `attribution`.

    `method` is one of saliency, deconvnet, guided (a gradient with that rule at each Relu),
    gradient-x-input, smoothgrad, integrated-gradients, gradcam, guided-gradcam. For the
    gradient methods `attribution` has the shape of the floating-point input (or of the tensor
    `wrt`); row n explains y[n, target[n]], where y is the first rank-2 float output (or
    `output`). With target="input" the model takes an int64 input `target` [N]; with
    target="argmax" it explains the predicted class and outputs it as `target`.
    integrated-gradients also outputs `completeness_gap` [N]; gradcam and guided-gradcam output
    `cam` [N, 1, h, w] ([N, 1, l] for a signal input [N, C, L], [N, 1, d, h, w] for a volume).
    `options` are the fields of `recipes.Options` (samples, noise, seed, steps, baseline,
    ig_method, layer). The input model is not changed; weights are shared.
    `tune_for` ("cpu" or "cuda") picks, among exact formulations of the same backward, the one
    that runs faster on that ONNX Runtime provider; either runs anywhere with equal results.
    """
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(Options)})
    if unknown:
        raise OptionError(f"unknown option {', '.join(map(repr, unknown))} (options: "
                          f"{', '.join(f.name for f in dataclasses.fields(Options) if f.name != 'relu_like')})")
    opts = Options(relu_like=relu_like, **options)
    if method not in ALL_METHODS:
        raise OptionError(f"unknown method '{method}' (choose from {', '.join(ALL_METHODS)})")
    if opts.layer is not None and method not in CAM_METHODS:
        raise OptionError(f"--layer applies to gradcam and guided-gradcam, not {method}")
    src = load_model(model)
    if isinstance(model, onnx.ModelProto):  # the caller's model: work on a copy
        out = onnx.ModelProto()
        out.CopyFrom(src)
    else:  # loaded here: nobody else holds it, so extend it in place (no copy of the weights)
        out = src
    x = onnx.ValueInfoProto()
    x.CopyFrom(_float_input(out, input, allow_int=wrt is not None))
    inits = {i.name for i in out.graph.initializer}
    inputs = [i.name for i in out.graph.input if i.name not in inits]
    b = _builder(out, x.type.tensor_type.elem_type, tune_for=tune_for)
    if wrt is not None and method in CAM_METHODS:
        raise OptionError(f"--wrt does not apply to {method}: its map is at --layer, its attribution at the input")
    if wrt is not None and (wrt not in b.types or not b.is_float(wrt)):
        raise NotAClassifierError(f"--wrt '{wrt}' is not a floating-point tensor of the model")
    if x.type.tensor_type.elem_type not in FLOAT_TYPES:  # token ids: the float type is that of --wrt
        b.set_dtype(b.types[wrt])
    _check_opset(b)
    w = wrt or x.name
    try:
        y = _scores(b, output)
    except OnnxAttrError:
        named = _left_unknown(b, output) if output is not None else _zipped(b)
        if named is not None and method != "gradcam":
            # a node without a rule on the way to it (skl2onnx's SVMClassifier, TreeEnsembleClassifier
            # before a ZipMap) is the cause to tell, before the type or shape it leaves unknown
            refuse_missing_rules(differentiable_path(b, [w], [named])[0], get_method("saliency"))
        raise
    for name in ADDED_OUTPUTS:
        if b.taken(name):
            raise UnsupportedModelError(f"the model already has a tensor named '{name}'")
    if method != "gradcam":  # (gradcam differentiates from its layer on: checked once that is chosen)
        refuse_missing_rules(differentiable_path(b, [w], [y])[0], get_method("saliency"))  # before needing shapes
    classes = b.static_shape(y, None, dims=[1])[1]
    wa = batch_axis(b, w, y)
    if b.shapes.get(w) == [] or (b.differ(w, 0, y, 0) and wa is None):
        refuse_shape_conflicts(b, differentiable_path(b, [w], [y])[0])  # (the cause when one lost the batch's dim)
        raise NotAClassifierError(
            f"'{w}' {b.dims_text(w)} has no batch axis: its first axis is not that of the scores '{y}' "
            f"{b.dims_text(y)}, nor is another one singled out (row n of the attribution explains row n of the "
            "scores)")
    # the input's batch axis: its first unless another one is shown to be the scores' (time-major [T, N, F])
    xdims = list(x.type.tensor_type.shape.dim)
    xa = (batch_axis(b, x.name, y) or 0) if xdims else 0
    batch = xdims[xa] if xdims else None
    if target == "input":
        t = TARGET
        out.graph.input.append(_value_info(TARGET, TensorProto.INT64, [batch]))
    elif target == "argmax":
        t = b.op("ArgMax", [y], axis=1, keepdims=0)
    else:
        raise OptionError(f"target must be 'input' or 'argmax', not {target!r}")
    ctx = Context(b, inputs, x.name, w, y, t, classes)
    results = build(method, ctx, opts)
    layer = results.pop("_layer", None)
    if w == x.name:
        wdims = xdims
    else:
        wdims = list(b.shapes.get(w) or [None])
        wdims[wa or 0] = batch
    shapes = {ATTRIBUTION: wdims, "completeness_gap": [batch]}
    if method == "gradcam":
        nhwc = input_is_nhwc(b, x.name)
        shapes[ATTRIBUTION] = [batch] + (xdims[1:-1] + [1] if nhwc else [1] + xdims[2:])
    if layer is not None:
        dims = b.shapes.get(layer) or [None] * 4
        shapes["cam"] = [batch, 1] + [dims[a] for a in cam_axes(b, layer)[1]]
    outputs = dict(results)
    if target == "argmax":
        outputs[TARGET] = t
    for name, tensor in outputs.items():
        b.nodes.append(helper.make_node("Identity", [tensor], [name], name=b.fresh(name)))
    kept = prune(b.nodes, set(outputs))
    out.graph.node.extend(kept)
    out.graph.value_info.extend(b.value_info[o] for n in kept for o in n.output if o in b.value_info)
    for name in outputs:
        elem = TensorProto.INT64 if name == TARGET else b.dtype
        out.graph.output.append(_value_info(name, elem, [batch] if name == TARGET else shapes[name]))
    meta = {"onnxattr.method": method, "onnxattr.scores": y, "onnxattr.wrt": w, "onnxattr.tuned_for": tune_for}
    if layer is not None:
        meta["onnxattr.layer"] = layer
    # the batch axes where not 0 (so a batch-first export is as before): the input's, which
    # `target` and the rows follow, and with --wrt the attribution's
    if xa:
        meta[BATCH_AXIS] = str(xa)
    if w != x.name and wa:
        meta[WRT_BATCH_AXIS] = str(wa)
    # an earlier export's keys are replaced, also those this one does not write (a stale batch axis)
    kept = [p for p in out.metadata_props if not p.key.startswith("onnxattr.")]
    del out.metadata_props[:]
    out.metadata_props.extend(kept)
    for k, v in meta.items():
        out.metadata_props.add(key=k, value=v)
    return out


def coverage(model, method: str = "saliency", relu_like: bool = False, output: str | None = None) -> list[dict]:
    """Per op type: count, nodes on the differentiable path (to `output`, else to the first
    rank-2 float output, else to all outputs), gradient rule, method override. The composed
    methods use the rules of the base method they differentiate with. Counts include the nodes
    of subgraphs (Loop bodies, If branches); a subgraph's node on the path is named
    '<its node>/<node>'."""
    if method not in ALL_METHODS:
        raise OptionError(f"unknown method '{method}' (choose from {', '.join(ALL_METHODS)})")
    policy = get_method(method if method in METHODS else "guided" if method == "guided-gradcam" else "saliency",
                        relu_like=relu_like)
    src = load_model(model)
    if src is model:  # the caller's own ModelProto: inlining (in _builder) works on a copy
        src = onnx.ModelProto()
        src.CopyFrom(model)
    x = _float_input(src, None)
    expanded: dict[str, tuple[str, str]] = {}  # node of a function's body -> (its op type, its node)
    b = _builder(src, x.type.tensor_type.elem_type, expanded=expanded)
    if output is not None:
        try:
            ys = [_scores(b, output)]
        except OnnxAttrError:
            if _left_unknown(b, output) is None:
                raise
            ys = [output]  # (of unknown type or shape after an op without a rule: list what is missing)
    else:
        try:
            ys = [_scores(b, None)]
        except NotAClassifierError:
            ys = [o.name for o in src.graph.output]
    path, live = differentiable_path(b, [x.name], ys)
    label = lambda n: n.name or n.output[0]  # noqa: E731
    named = [(label(n), n) for n in path] + [(f"{label(n)}/{label(m)}", m) for n in path for m in inside(n, live)]
    on_path = Counter(n.op_type for _, n in named if n.name not in expanded)
    on_path.update(Counter(op for op, _ in {expanded[n.name] for _, n in named if n.name in expanded}))
    missing_nodes = {}
    for name, n in named:
        if policy.rule(rule_key(n)) is None:
            missing_nodes.setdefault(n.op_type, []).append(name)
    rows = []
    nodes = [n for n in _all_nodes(src.graph) if n.name not in expanded]
    key = {n.op_type: rule_key(n) for n in reversed(nodes)}  # (an op type's first node's domain)
    functions = Counter(op for op, _ in set(expanded.values()))
    for op, count in sorted((Counter(n.op_type for n in nodes) + functions).items()):
        rows.append({
            "op_type": op, "count": count, "on_path": on_path.get(op, 0),
            "has_rule": op in functions or policy.rule(key[op]) is not None, "overridden": op in policy.overrides,
            "missing_nodes": missing_nodes.get(op, []), "function": op in functions,
        })
    return rows


def _all_nodes(g: onnx.GraphProto) -> list[onnx.NodeProto]:
    """A graph's nodes and those of its subgraphs, nested ones too."""
    out = []
    for n in g.node:
        out.append(n)
        for a in n.attribute:
            for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                out += _all_nodes(sub)
    return out


def vjp_model(model, wrt: list[str] | None = None, of: list[str] | None = None, method: str = "saliency",
              relu_like: bool = False, tune_for: str = "cpu") -> tuple[onnx.ModelProto, dict[str, str], dict[str, str]]:
    """A model with one extra input per differentiated output (its cotangent, same shape) and one
    extra output per `wrt` input (the vector-Jacobian product). Used to test rules op by op.

    Returns (model, {output: cotangent input name}, {input: gradient output name}).
    """
    policy = get_method(method, relu_like=relu_like)
    src = load_model(model)
    inits = {i.name for i in src.graph.initializer}
    float_inputs = [i for i in src.graph.input if i.name not in inits and i.type.tensor_type.elem_type in FLOAT_TYPES]
    wrt = wrt or [i.name for i in float_inputs]
    out = onnx.ModelProto()
    out.CopyFrom(src)
    expand_contrib(out)
    expand_functions(out)
    b = Builder(out, float_inputs[0].type.tensor_type.elem_type, tune_for=tune_for)
    of = of or [o.name for o in src.graph.output if b.is_float(o.name)]
    seeds, grads_out = {}, {}
    for y in of:
        vi = next((o for o in src.graph.output if o.name == y), None)
        if vi is None:
            raise NotAClassifierError(f"'{y}' is not an output of the model")
        cot = onnx.ValueInfoProto()
        cot.CopyFrom(vi)
        cot.name = b.fresh(f"cotangent_{y}")
        out.graph.input.append(cot)
        seeds[y] = cot.name
    grads = build_backward(b, seeds, wrt, policy)
    for x in wrt:
        name = b.fresh(f"grad_{x}")
        b.nodes.append(helper.make_node("Identity", [grads[x]], [name], name=b.fresh("grad")))
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(next(i for i in src.graph.input if i.name == x))
        vi.name = name
        out.graph.output.append(vi)
        grads_out[x] = name
    out.graph.node.extend(prune(b.nodes, set(grads_out.values())))
    return out, seeds, grads_out
