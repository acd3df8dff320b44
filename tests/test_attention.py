"""Opset 23's attention ops in whole models exported by PyTorch (dynamo): a transformer block
with nn.RMSNorm and scaled_dot_product_attention (written as RMSNormalization and Attention;
causal, masked, grouped-query), and timm's ViT with its fused attention, against float64
autograd; guided backprop and deconvnet against Captum. The ops' own cases (float64 differences,
float32 ONNX Runtime) are in tests/test_vjp_ops.py.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import onnxruntime as ort
import pytest

import onnxattr

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


class Block(nn.Module):
    """x [N, 6, 16] -> RMSNorm -> attention (4 query heads of 4; 2 key/value heads with `grouped`)
    -> residual -> Linear-ReLU-Linear -> mean over tokens -> scores [N, 5]."""

    def __init__(self, causal=False, grouped=False, masked=False):
        super().__init__()
        kv = 2 if grouped else 4
        self.norm, self.q, self.k, self.v = nn.RMSNorm(16), nn.Linear(16, 16), nn.Linear(16, 4 * kv), nn.Linear(16, 4 * kv)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
        self.head = nn.Linear(16, 5)
        self.causal, self.grouped, self.kv = causal, grouped, kv
        self.register_buffer("mask", torch.rand(6, 6, generator=torch.Generator().manual_seed(3)) > 0.3 if masked else None)
        if masked:
            self.mask[:, 0] = True  # every query sees one key at least

    def forward(self, x):
        n, t, _ = x.shape
        z = self.norm(x)
        q = self.q(z).view(n, t, 4, 4).transpose(1, 2)
        k, v = (f(z).view(n, t, self.kv, 4).transpose(1, 2) for f in (self.k, self.v))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, is_causal=self.causal, enable_gqa=self.grouped)
        h = x + o.transpose(1, 2).reshape(n, t, 16)
        return self.head((h + self.mlp(h)).mean(1))


def _export(module, x):
    """Exported by dynamo at opset 23, the batch dynamic (test_models_modern.export_torch)."""
    from test_models_modern import export_torch

    return export_torch(module, x.numpy(), "dynamo", 23)


def _grad64(module, x, target, method=None):
    module = module.double()
    x64 = torch.from_numpy(x).double().requires_grad_(True)
    if method is None:
        module(x64).gather(1, torch.from_numpy(target)[:, None]).sum().backward()
        out = x64.grad.numpy()
    else:
        import captum.attr as ca

        cls = {"guided": ca.GuidedBackprop, "deconvnet": ca.Deconvolution}[method]
        out = cls(module).attribute(x64, target=torch.from_numpy(target)).detach().numpy()
    module.float()
    return out


@pytest.mark.parametrize("kind", ["plain", "causal", "masked", "grouped_causal"])
def test_transformer_block_against_float64_autograd(kind):
    torch.manual_seed(0)
    module = Block(causal="causal" in kind, grouped="grouped" in kind, masked=kind == "masked").eval()
    x = np.random.default_rng(1).standard_normal((3, 6, 16)).astype(np.float32)
    m = _export(module, torch.from_numpy(x))
    ops = {n.op_type for n in m.graph.node}
    assert {"Attention", "RMSNormalization"} <= ops, ops
    s = ort.InferenceSession(onnxattr.attribution_model(m).SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (3, 1):  # the batch is dynamic
        target = np.arange(n) % 5
        got = s.run(["attribution"], {m.graph.input[0].name: x[:n], "target": target})[0]
        want = _grad64(module, x[:n], target)
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err < 2e-6, f"{kind}, N={n}: relative error {err:.2e}"  # measured 3.2e-7 at most


@pytest.mark.parametrize("method", ["guided", "deconvnet"])
def test_transformer_block_methods_against_captum(method):
    torch.manual_seed(0)
    module = Block(causal=True).eval()
    x = np.random.default_rng(2).standard_normal((2, 6, 16)).astype(np.float32)
    m = _export(module, torch.from_numpy(x))
    s = ort.InferenceSession(onnxattr.attribution_model(m, method=method).SerializeToString(), providers=["CPUExecutionProvider"])
    target = np.array([4, 1])
    got = s.run(["attribution"], {m.graph.input[0].name: x, "target": target})[0]
    want = _grad64(module, x, target, method)
    assert np.abs(want - _grad64(module, x, target)).max() > 1e-3 * np.abs(want).max()  # the rule matters here
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 2e-6, f"relative error {err:.2e}"  # measured 1.2e-7 at most


def test_timm_vit_with_fused_attention_against_float64_autograd():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    module = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=7).eval()
    assert module.blocks[0].attn.fused_attn  # scaled_dot_product_attention: an Attention node at opset 23
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    m = _export(module, torch.from_numpy(x))
    assert sum(n.op_type == "Attention" for n in m.graph.node) == 12
    s = ort.InferenceSession(onnxattr.attribution_model(m).SerializeToString(), providers=["CPUExecutionProvider"])
    target = np.array([3, 6])
    got = s.run(["attribution"], {m.graph.input[0].name: x, "target": target})[0]
    want = _grad64(module, x, target)
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 5e-6, f"relative error {err:.2e}"  # measured 8.8e-7


# ------------------------------------------------------------------ refusals
def _attention_model(inputs, outputs=("y",), opset=23, **attrs):
    """x [2, 2, 4, 3] -> Attention(inputs) -> outputs, float32 (a valid model)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((2, 2, 1, 3)).astype(np.float32), n) for n in ("pk", "pv")]
    inits.append(numpy_helper.from_array(np.array([4, 2], np.int64), "lens"))
    outs = ["y", "", "", "qk"] if "qk" in outputs else ["y"]
    nodes = [helper.make_node("Attention", inputs, outs, name="attn", **attrs)]
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2, 4, 3])],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return m


def _refusal_models():
    return [
        (_attention_model(["x", "x", "x", "", "", "", "lens"], softcap=5.0, opset=24),
         "softcap \\(5.0\\) with per-row key lengths \\(nonpad_kv_seqlen\\) is not supported"),
        (_attention_model(["x", "x", "x", "", "pk", "pv"]), "a key/value cache \\(past_key, past_value\\) is not supported"),
        (_attention_model(["x", "x", "x", "", "", "", "lens"], outputs=("y", "qk"), qk_matmul_output_mode=1, opset=24),
         "with per-row key lengths \\(nonpad_kv_seqlen\\) the backward needs the probabilities"),
    ]


def test_attention_with_its_scores_also_an_output():
    """A model that also returns the attention scores (qk_matmul_output, mode 1): explaining its
    first output gives the gradient of the model without that output."""
    x = np.random.default_rng(4).standard_normal((2, 2, 4, 3)).astype(np.float32)
    cot = np.random.default_rng(5).standard_normal((2, 2, 4, 3)).astype(np.float32)
    grads = []
    for m in (_attention_model(["x", "x", "x"], outputs=("y", "qk"), qk_matmul_output_mode=1), _attention_model(["x", "x", "x"])):
        vm, cots, gnames = onnxattr.api.vjp_model(m, of=["y"])
        s = ort.InferenceSession(vm.SerializeToString(), providers=["CPUExecutionProvider"])
        grads.append(s.run([gnames["x"]], {"x": x, cots["y"]: cot})[0])
    assert np.abs(grads[1]).max() > 0
    np.testing.assert_array_equal(grads[0], grads[1])


@pytest.mark.parametrize("i", range(3))
def test_attention_refusals_name_the_node(i):
    m, words = _refusal_models()[i]
    with pytest.raises(onnxattr.UnsupportedModelError, match=f"Attention node 'attn': {words}"):
        onnxattr.api.vjp_model(m, of=["y"])


def test_attributes_the_rules_do_not_read_are_refused():
    """An attribute a rule does not read (a later opset's addition) would be silently ignored:
    refused by name instead (checked on the graph alone; no runtime knows such an attribute)."""
    from onnx import TensorProto, helper

    for op, extra in (("Attention", ["x", "x"]), ("RMSNormalization", ["s"]), ("RotaryEmbedding", ["c", "c"])):
        g = helper.make_graph([helper.make_node(op, ["x"] + extra, ["y"], name="node", future_mode=1)], "m",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 2, 4, 4]) for n in ["x", "s", "c"]],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2, 4, 4])])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)
        with pytest.raises(onnxattr.UnsupportedModelError, match=f"{op} node 'node': its attribute 'future_mode' is not supported"):
            onnxattr.api.vjp_model(m, wrt=["x"], of=["y"])


def test_rotary_caches_that_depend_on_the_input_are_refused():
    from onnx import TensorProto, helper, numpy_helper

    N = helper.make_node
    nodes = [N("ReduceMean", ["x"], ["s"], keepdims=0), N("Mul", ["cos", "s"], ["c"]),
             N("RotaryEmbedding", ["x", "c", "sin", "pos"], ["y"], name="rope")]
    inits = [numpy_helper.from_array(np.cos(np.arange(8, dtype=np.float32)).reshape(4, 2), "cos"),
             numpy_helper.from_array(np.sin(np.arange(8, dtype=np.float32)).reshape(4, 2), "sin"),
             numpy_helper.from_array(np.array([[0, 1, 2, 3]] * 2, np.int64), "pos")]
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)
    ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    with pytest.raises(onnxattr.UnsupportedModelError, match="RotaryEmbedding node 'rope': its cache 'c' depends on the input"):
        onnxattr.api.vjp_model(m)


def test_huggingface_bert_classifier_against_float64_autograd():
    """A BERT sequence classifier from transformers (a small config, random weights) exported at
    opset 23: its attention as Attention nodes with the padding mask made from attention_mask.
    Saliency at the word embeddings (--wrt) against float64 autograd through inputs_embeds; the
    padded tokens, which no query attends to, get exactly 0."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64, num_labels=3, attn_implementation="sdpa")
    torch.manual_seed(0)
    bert = transformers.BertForSequenceClassification(cfg).eval()

    class Scores(nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, ids, mask):
            return self.bert(input_ids=ids, attention_mask=mask).logits

    ids = torch.randint(1, 100, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 7:] = 0
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        m = torch.onnx.export(Scores(), (ids, mask), dynamo=True, opset_version=23, input_names=["ids", "mask"]).model_proto
    assert sum(n.op_type == "Attention" for n in m.graph.node) == 2
    emb = next(n.output[0] for n in m.graph.node if n.op_type == "Gather" and "word_embeddings" in n.input[0])
    s = ort.InferenceSession(onnxattr.attribution_model(m, wrt=emb).SerializeToString(), providers=["CPUExecutionProvider"])
    target = np.array([0, 2])
    got = s.run(["attribution"], {"ids": ids.numpy(), "mask": mask.numpy(), "target": target})[0]
    b64 = bert.double()
    e = b64.bert.embeddings.word_embeddings(ids).detach().requires_grad_(True)
    b64(inputs_embeds=e, attention_mask=mask).logits.gather(1, torch.from_numpy(target)[:, None]).sum().backward()
    want = e.grad.numpy()
    bert.float()
    assert np.all(got[1, 7:] == 0) and np.abs(want[1, 7:]).max() == 0
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 2e-6, f"relative error {err:.2e}"  # measured 1.9e-7


def test_the_backward_recomputes_the_probabilities():
    """The attention probabilities are recomputed from Q and K, so the forward Attention nodes
    keep their one output: ONNX Runtime's CUDA kernel of Attention-23 returns qk_matmul_output
    in mode 0 only, and would refuse a graph asking for the probabilities (mode 3). Only opset
    24's per-row key lengths, whose masking is not rebuilt, ask the forward node for them."""
    from test_vjp_ops import CASES
    from vjp_check import build

    torch.manual_seed(0)
    for module in (Block(causal=True, grouped=True), Block(masked=True)):
        m = _export(module.eval(), torch.randn(2, 6, 16))
        att = [n for n in onnxattr.attribution_model(m).graph.node if n.op_type == "Attention"]
        assert len(att) == 1 and list(att[0].output) == [n.output[0] for n in m.graph.node if n.op_type == "Attention"]
    for cid, outputs in (("Attention/bool_mask_row_masked_op23", 1), ("Attention/nonpad_kv_seqlen_causal_op24", 4)):
        c = next(c for c in CASES if c.id == cid)
        vm = onnxattr.api.vjp_model(build(c, {"y": None}))[0]
        node = next(n for n in vm.graph.node if n.op_type == "Attention")
        assert len(node.output) == outputs, (cid, list(node.output))
