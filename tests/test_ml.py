"""ai.onnx.ml ops (onnxattr/vjp/ml.py): LinearClassifier, Normalizer, Scaler, ArrayFeatureExtractor.

Their outputs are float32 whatever the input (the spec), so the float64 op-spec table cannot
hold them. Instead, per variant: a numpy float64 forward written from the spec is first checked
against ONNX Runtime's own output (so it is ONNX Runtime's semantics, quirks included: a binary
classifier's scores are [1 - s, s] there), then the VJP model on ONNX Runtime (float32) against
that forward's float64 central differences, in one random direction and cotangent per row.
Then scikit-learn's LogisticRegression (binary, multinomial, after a StandardScaler) and
LinearSVC through skl2onnx, against the gradient of predict_proba or the decision values computed
from their coefficients in float64; and the forms refused by name.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxattr

N, F, C = 5, 4, 3
rng0 = np.random.default_rng(21)
W = rng0.standard_normal((C, F))
B = rng0.standard_normal(C)


def _model(nodes, outputs, width=None, opset=17):
    inits = [numpy_helper.from_array(np.array([2, 0, 2], np.int64), "picked")]  # (ArrayFeatureExtractor's)
    graph = helper.make_graph(nodes, "ml", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", F])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["N", width]) for o in outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("ai.onnx.ml", 3)],
                             ir_version=8)


def _classifier(post, binary=False):
    w, b = (W[:1], B[:1]) if binary else (W, B)
    node = helper.make_node("LinearClassifier", ["x"], ["label", "z"], domain="ai.onnx.ml", name="linear",
                            coefficients=w.ravel().tolist(), intercepts=b.tolist(),
                            classlabels_ints=[0, 1] if binary else list(range(C)), post_transform=post)
    return node, w, b


def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


def _classify(x, w, b, post, binary):
    s = x @ w.T + b
    if binary:
        f = _sigmoid(s) if post == "LOGISTIC" else s
        return np.concatenate([1 - f, f], axis=1)
    if post == "LOGISTIC":
        return _sigmoid(s)
    if post == "SOFTMAX":
        e = np.exp(s - s.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)
    return s


def _variants():
    out = []
    for post, binary in [("NONE", False), ("LOGISTIC", False), ("SOFTMAX", False), ("NONE", True), ("LOGISTIC", True)]:
        node, w, b = _classifier(post, binary)
        out.append((f"LinearClassifier/{post}{'/binary' if binary else ''}", [node], "z",
                    lambda x, w=w, b=b, post=post, binary=binary: _classify(x, w, b, post, binary)))
    offset, scale = np.array([0.5, -1.0, 2.0, 0.0]), np.array([2.0, 0.5, -3.0, 1.5])
    out.append(("Scaler/per_feature", [helper.make_node("Scaler", ["x"], ["y"], domain="ai.onnx.ml", offset=offset.tolist(),
                                                        scale=scale.tolist())], "y", lambda x: (x - offset) * scale))
    out.append(("Scaler/one_for_all", [helper.make_node("Scaler", ["x"], ["y"], domain="ai.onnx.ml", offset=[0.25], scale=[-2.0])],
                "y", lambda x: (x - 0.25) * -2.0))
    out.append(("Normalizer/L1", [helper.make_node("Normalizer", ["x"], ["y"], domain="ai.onnx.ml", norm="L1")], "y",
                lambda x: x / np.abs(x).sum(1, keepdims=True)))
    out.append(("Normalizer/L2", [helper.make_node("Normalizer", ["x"], ["y"], domain="ai.onnx.ml", norm="L2")], "y",
                lambda x: x / np.sqrt((x * x).sum(1, keepdims=True))))
    out.append(("ArrayFeatureExtractor/repeated", [helper.make_node("ArrayFeatureExtractor", ["x", "picked"], ["y"],
                                                                    domain="ai.onnx.ml")], "y", lambda x: x[:, [2, 0, 2]]))
    # the usual chain: scaled features, softmax scores, then L1 over them (skl2onnx's LogisticRegression)
    node, w, b = _classifier("SOFTMAX")
    chain = [helper.make_node("Scaler", ["x"], ["xs"], domain="ai.onnx.ml", offset=[0.1] * F, scale=[1.5] * F), node,
             helper.make_node("Normalizer", ["z"], ["p"], domain="ai.onnx.ml", norm="L1")]
    chain[1].input[0] = "xs"
    out.append(("Scaler_LinearClassifier_Normalizer", chain, "p",
                lambda x: (lambda z: z / np.abs(z).sum(1, keepdims=True))(_classify((x - 0.1) * 1.5, w, b, "SOFTMAX", False))))
    return out


VARIANTS = _variants()


@pytest.mark.parametrize("name, nodes, out, forward", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_ml_vjp_against_onnx_runtime_semantics(name, nodes, out, forward):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((N, F))
    model = _model(nodes, [out])
    y_ort = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run([out], {"x": x.astype(np.float32)})[0]
    y64 = forward(x)
    np.testing.assert_allclose(y_ort, y64, rtol=1e-5, atol=1e-5, err_msg="the numpy forward is not ONNX Runtime's")
    vm, cots, grads = onnxattr.api.vjp_model(model, wrt=["x"], of=[out])
    sess = ort.InferenceSession(vm.SerializeToString(), providers=["CPUExecutionProvider"])
    cot = rng.standard_normal(y64.shape)
    got = sess.run([grads["x"]], {"x": x.astype(np.float32), cots[out]: cot.astype(np.float32)})[0]
    eps, worst = 1e-6, 0.0
    for _ in range(3):
        t = rng.standard_normal(x.shape)
        lhs = ((forward(x + eps * t) - forward(x - eps * t)) / (2 * eps) * cot).sum(axis=1)  # per row: <J t, c>
        rhs = (t * got).sum(axis=1)
        worst = max(worst, float(np.max(np.abs(lhs - rhs)) / np.max(np.abs(lhs))))
    assert worst < 1e-5, f"{name}: relative error {worst:.2e}"


def _sklearn(kind):
    pytest.importorskip("sklearn")
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    X = (rng.standard_normal((80, 5)) * [1, 2, 3, 0.5, 1] + [0, 1, -2, 3, 0]).astype(np.float32)
    y = np.arange(80) % (2 if kind == "binary" else 4 if kind == "scaled" else 3)
    clf = LogisticRegression(max_iter=500)
    model = make_pipeline(StandardScaler(), clf) if kind == "scaled" else clf
    model.fit(X, y)
    proto = skl2onnx.to_onnx(model, X[:1], options={id(clf): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    return model, clf, proto, X


def _proba_gradient(model, clf, x, target):
    """d predict_proba(x)[n, target[n]] / dx in float64, from the fitted coefficients."""
    w, b = clf.coef_.astype(np.float64), clf.intercept_.astype(np.float64)
    factor = np.ones(x.shape[1])
    xs = x.astype(np.float64)
    if hasattr(model, "steps"):
        factor = 1 / model.steps[0][1].scale_
        xs = (xs - model.steps[0][1].mean_) * factor
    s = xs @ w.T + b
    if w.shape[0] == 1:
        p1 = _sigmoid(s[:, 0])
        d = (p1 * (1 - p1))[:, None] * w[0] * factor
        return np.where((target == 1)[:, None], d, -d)
    p = np.exp(s - s.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return p[np.arange(len(target)), target][:, None] * (w[target] - p @ w) * factor


@pytest.mark.parametrize("kind", ["multinomial", "binary", "scaled"])
def test_sklearn_logistic_regression(kind):
    """LinearClassifier (SOFTMAX + Normalizer L1; for two classes skl2onnx writes two rows, w and
    -w, with LOGISTIC: the one-row binary form is covered above), after a Scaler in the
    pipeline; the probabilities output is found without --output. Measured 1.6e-7."""
    model, clf, proto, X = _sklearn(kind)
    explain = onnxattr.Explainer(proto, provider="cpu")
    x = X[:6]
    target = np.array([0, 1, 1, 0, 1, 0])
    got = explain(x, target)
    want = _proba_gradient(model, clf, x, target)
    assert np.abs(want).max() > 1e-3
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())


def test_sklearn_sgd_log_loss_where_exp_overflows():
    """SGDClassifier(loss="log_loss"): one-vs-rest sigmoids, skl2onnx's Mul(s, -1) -> Exp -> Add 1
    -> Reciprocal, normalised by their sum. For rows with a decision value below -88.7, exp(-s)
    is inf in float32 while the forward stays finite; the backward was NaN for the whole row,
    every target (fails before: patterns.fuse now differentiates the chain as one logistic)."""
    pytest.importorskip("sklearn")
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.linear_model import SGDClassifier

    rng = np.random.default_rng(0)
    X = (rng.standard_normal((300, 4)) * [1, 30, 3, 10]).astype(np.float32)  # unscaled features
    clf = SGDClassifier(loss="log_loss", random_state=0).fit(X, np.arange(300) % 3)
    proto = skl2onnx.to_onnx(clf, X[:1], options={id(clf): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    w, b = (v.astype(np.float32).astype(np.float64) for v in (clf.coef_, clf.intercept_))  # as the model holds them
    s = X.astype(np.float64) @ w.T + b
    rows = np.flatnonzero((s < -89).any(axis=1) & (np.abs(s).min(axis=1) < 8))[:6]  # an overflow; a target off saturation
    assert len(rows) >= 3
    x, target = X[rows], np.argmin(np.abs(s[rows]), axis=1)
    got = onnxattr.Explainer(proto, provider="cpu")(x, target)
    s32 = (x @ w.T.astype(np.float32) + b.astype(np.float32)).astype(np.float64)  # the model's float32 scores
    sig = 1 / (1 + np.exp(-s32))  # then float64: d (sig_t / sum sig) / dx
    dsig = (sig * (1 - sig))[:, :, None] * w[None]
    tot = sig.sum(axis=1, keepdims=True)
    t = np.arange(len(rows)), target
    want = dsig[t] / tot - (sig[t][:, None] / tot ** 2) * dsig.sum(axis=1)
    assert np.isfinite(got).all() and np.abs(want).max() > 1e-6
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())  # measured 3.8e-7


def test_sklearn_one_vs_rest_logistic_regression():
    """OneVsRestClassifier's probabilities: one binary LogisticRegression per class, normalised by
    their sum, which skl2onnx writes as LpNormalization(p=1) (refused before: no rule)."""
    pytest.importorskip("sklearn")
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    rng = np.random.default_rng(0)
    X = rng.standard_normal((90, 4)).astype(np.float32)
    clf = OneVsRestClassifier(LogisticRegression()).fit(X, np.arange(90) % 3)
    proto = skl2onnx.to_onnx(clf, X[:1], options={id(clf): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    assert "LpNormalization" in {n.op_type for n in proto.graph.node}
    x, target = X[:6], np.array([0, 1, 2, 2, 1, 0])
    got = onnxattr.Explainer(proto, provider="cpu")(x, target)
    w = np.concatenate([e.coef_ for e in clf.estimators_]).astype(np.float32).astype(np.float64)
    b = np.concatenate([e.intercept_ for e in clf.estimators_]).astype(np.float32).astype(np.float64)
    sig = 1 / (1 + np.exp(-(x.astype(np.float64) @ w.T + b)))  # float64: d (sig_t / sum sig) / dx
    dsig = (sig * (1 - sig))[:, :, None] * w[None]
    tot = sig.sum(axis=1, keepdims=True)
    t = np.arange(len(x)), target
    want = dsig[t] / tot - (sig[t][:, None] / tot ** 2) * dsig.sum(axis=1)
    np.testing.assert_allclose(clf.predict_proba(x)[t], (sig / tot)[t], rtol=1e-6)  # the reference is sklearn's function
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("classes", [2, 3])
def test_sklearn_linear_svc(classes):
    """LinearSVC's decision values: for two classes skl2onnx writes the one-row binary
    LinearClassifier and picks the positive score with ArrayFeatureExtractor at a scalar index
    (ONNX infers fresh lengths for its output: declared by shapes.ml_shapes). The gradient of a
    decision value is its coefficient row."""
    pytest.importorskip("sklearn")
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.svm import LinearSVC

    X = np.random.default_rng(0).standard_normal((60, 5)).astype(np.float32)
    svc = LinearSVC().fit(X, np.arange(60) % classes)
    proto = skl2onnx.to_onnx(svc, X[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    assert ("ArrayFeatureExtractor" in {n.op_type for n in proto.graph.node}) == (classes == 2)
    target = np.array([0, 0, 0]) if classes == 2 else np.array([0, 1, 2])
    got = onnxattr.Explainer(proto, provider="cpu")(X[:3], target)
    np.testing.assert_allclose(got, svc.coef_[target], rtol=0, atol=1e-6)  # measured 6.4e-9


def test_target_checked_against_the_scores_a_model_returns():
    """skl2onnx declares a binary RidgeClassifier's scores [N, 2]; ONNX Runtime returns [N, 1] (the
    positive class's decision). Target 0 is d decision / dx = coef_; target 1 gave all-zero rows
    where it must raise TargetError."""
    from sklearn.linear_model import RidgeClassifier
    from skl2onnx import to_onnx

    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 5))
    est = RidgeClassifier().fit(X, (X[:, 0] + X[:, 1] > 0).astype(int))
    x = X[:3].astype(np.float32)
    proto = to_onnx(est, x, options={id(est): {"zipmap": False}}, target_opset={"": 15, "ai.onnx.ml": 1})
    proto.ir_version = 8
    explain = onnxattr.Explainer(proto, provider="cpu")
    np.testing.assert_allclose(explain(x, 0), np.tile(est.coef_.reshape(1, -1), (3, 1)), rtol=0, atol=1e-6)
    with pytest.raises(onnxattr.TargetError, match=r"target \[1, 1, 1\] is out of range for 1 classes"):
        explain(x, 1)


@pytest.mark.parametrize("post, binary, why", [
    ("PROBIT", False, "post_transform PROBIT is not supported"),
    ("SOFTMAX_ZERO", False, "post_transform SOFTMAX_ZERO is not supported"),
    ("SOFTMAX", True, "post_transform SOFTMAX with one row of coefficients is not supported"),
])
def test_unsupported_classifier_forms_are_refused(post, binary, why):
    node, _, _ = _classifier(post, binary)
    with pytest.raises(onnxattr.UnsupportedModelError, match=f"LinearClassifier node 'linear': {why}"):
        onnxattr.attribution_model(_model([node], ["z"]), output="z")


def test_normalizer_max_is_refused():
    node = helper.make_node("Normalizer", ["x"], ["y"], domain="ai.onnx.ml", norm="MAX", name="norm")
    with pytest.raises(onnxattr.UnsupportedModelError, match="Normalizer node 'norm': norm MAX is not supported"):
        onnxattr.attribution_model(_model([node], ["y"], width=F), output="y")


def test_scaler_of_a_higher_rank_input_is_refused():
    """ONNX Runtime scales flat element i by scale[i % dims[1]]; the rule's per-feature product
    along the last axis gave a [2, 3, 3] gradient for a [2, 3, 1] input (an audit's case)."""
    nodes = [helper.make_node("Scaler", ["x"], ["s"], domain="ai.onnx.ml", name="scale", scale=[1.0, 2.0, 3.0]),
             helper.make_node("Flatten", ["s"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])]
    graph = helper.make_graph(nodes, "ml", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(np.ones((3, 4), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)],
                              ir_version=8)
    with pytest.raises(onnxattr.UnsupportedModelError, match="Scaler node 'scale': input 'x' of rank 3 with per-feature"):
        onnxattr.attribution_model(model)


def test_a_custom_domain_op_of_a_default_name_gets_no_default_rule():
    """rule_key: com.example's Relu is not ONNX's."""
    node = helper.make_node("Relu", ["x"], ["y"], domain="com.example", name="theirs")
    m = _model([node], ["y"])
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(onnxattr.UnsupportedModelError, match=r"Relu node 'theirs' \(custom domain 'com.example'\)"):
        onnxattr.attribution_model(m, output="y")


def test_sklearn_knn_refusal_names_the_topk():
    """KNeighborsClassifier (uniform weights): the vote reads the input only through TopK's int64
    indices, beside its float values that nothing reads; the refusal said 'the output does not
    depend on it through float operations', naming no node (fails before)."""
    pytest.importorskip("sklearn")
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 4)).astype(np.float32)
    knn = KNeighborsClassifier(5).fit(X, np.arange(40) % 3)
    proto = skl2onnx.to_onnx(knn, X[:1], options={id(knn): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    with pytest.raises(onnxattr.UnsupportedModelError, match=r"no gradient reaches input 'X': the output depends on it "
                       r"only through TopK node '\w+', whose output '\w+' is int64 \(no gradient passes\)"):
        onnxattr.attribution_model(proto)


@pytest.mark.parametrize("kind, op", [("svc", "SVMClassifier"), ("tree", "TreeEnsembleClassifier")])
@pytest.mark.parametrize("output", [None, "probabilities"])
def test_sklearn_zipmap_after_an_op_without_rule_names_that_op(kind, op, output):
    """skl2onnx's default ZipMap after an SVM or a tree ensemble: the error said to pass --output
    probabilities, and then that the tensor was not rank-2 float (SVC) or of no known type (trees),
    never that the op before it has no gradient rule, as zipmap=False says (fails before)."""
    pytest.importorskip("sklearn")
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.svm import SVC
    from sklearn.tree import DecisionTreeClassifier

    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 4)).astype(np.float32)
    est = (SVC() if kind == "svc" else DecisionTreeClassifier(max_depth=3)).fit(X, np.arange(40) % 2)
    proto = skl2onnx.to_onnx(est, X[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    assert "ZipMap" in {n.op_type for n in proto.graph.node}
    with pytest.raises(onnxattr.UnsupportedModelError, match=f"no gradient rule for 1 node\\(s\\) on the differentiable "
                       f"path: {op} node '\\w+' \\(domain 'ai.onnx.ml'\\)"):
        onnxattr.attribution_model(proto, output=output)
    rows = onnxattr.api.coverage(proto, output="probabilities")  # (raised before)
    assert [r["op_type"] for r in rows if r["missing_nodes"]] == [op]


def _sklearn_zoo(name):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.decomposition import PCA
    from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis
    from sklearn.ensemble import BaggingClassifier, StackingClassifier, VotingClassifier
    from sklearn.feature_selection import SelectKBest
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler, Normalizer, PolynomialFeatures, StandardScaler
    from sklearn.svm import LinearSVC

    lr = lambda: LogisticRegression(max_iter=1000)  # noqa: E731
    return {
        "GaussianNB": lambda: GaussianNB(),
        "QDA": lambda: QuadraticDiscriminantAnalysis(reg_param=0.1),
        "Calibrated(LinearSVC, sigmoid)": lambda: CalibratedClassifierCV(LinearSVC(), method="sigmoid", cv=3),
        "Voting(soft)": lambda: VotingClassifier([("lr", lr()), ("nb", GaussianNB()), ("mlp", MLPClassifier(
            (8,), max_iter=300, random_state=0))], voting="soft", flatten_transform=False),
        "Stacking": lambda: StackingClassifier([("lr", lr()), ("nb", GaussianNB())], final_estimator=lr(), cv=3),
        "Bagging(LogisticRegression)": lambda: BaggingClassifier(lr(), n_estimators=3, random_state=0),
        "MinMaxScaler+PCA+LogisticRegression": lambda: make_pipeline(MinMaxScaler(), PCA(3), lr()),
        "StandardScaler+PolynomialFeatures+LogisticRegression": lambda: make_pipeline(StandardScaler(),
                                                                                     PolynomialFeatures(2), lr()),
        "StandardScaler+Normalizer(l2)+SelectKBest+LogisticRegression": lambda: make_pipeline(
            StandardScaler(), Normalizer("l2"), SelectKBest(k=3), lr()),
    }[name]()


ZOO = ["GaussianNB", "QDA", "Calibrated(LinearSVC, sigmoid)", "Voting(soft)", "Stacking", "Bagging(LogisticRegression)",
       "MinMaxScaler+PCA+LogisticRegression", "StandardScaler+PolynomialFeatures+LogisticRegression",
       "StandardScaler+Normalizer(l2)+SelectKBest+LogisticRegression"]


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("name", ZOO)
def test_sklearn_estimators_against_differences_of_predict_proba(name, classes):
    """More scikit-learn classifiers and pipelines through skl2onnx (zipmap off): the saliency of
    each class against float64 central differences of the estimator's own predict_proba (steps
    1e-4 and 1e-5 of each feature's spread agree to 1e-6 at these rows: no kink). Measured 2.4e-6 at
    most (binary GaussianNB; the others 4.7e-8 to 8.9e-7)."""
    pytest.importorskip("sklearn")
    skl2onnx = pytest.importorskip("skl2onnx")
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((120, 5)) * [1, 2, 0.5, 3, 1] + [0, 1, -1, 2, 0.5]).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] - X[:, 3] / 3 + rng.standard_normal(120) > 0).astype(int)
    if classes == 3:
        y = y + (X[:, 2] > -1)
    est = _sklearn_zoo(name).fit(X.astype(np.float64), y)
    last = est.steps[-1][1] if hasattr(est, "steps") else est
    proto = skl2onnx.to_onnx(est, X[:1], options={id(last): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    explain = onnxattr.Explainer(proto, provider="cpu")
    x = X[::20]
    x64, h = x.astype(np.float64), X.std(0).astype(np.float64)
    rows = np.arange(len(x))

    def differences(t, step):
        g = np.zeros(x.shape)
        for j in range(x.shape[1]):
            e = np.zeros(x.shape[1])
            e[j] = step * h[j]
            g[:, j] = (est.predict_proba(x64 + e)[rows, t] - est.predict_proba(x64 - e)[rows, t]) / (2 * e[j])
        return g

    got, want = [], []
    for c in range(classes):
        t = np.full(len(x), c)
        g1, g2 = differences(t, 1e-4), differences(t, 1e-5)
        assert np.abs(g1 - g2).max() <= 1e-6 * np.abs(g1).max() + 1e-9  # smooth at these rows
        got.append(explain(x, t))
        want.append(g1)
    got, want = np.array(got), np.array(want)
    assert np.abs(want).max() > 1e-2
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
