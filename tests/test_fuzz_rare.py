"""The gradient fuzzer over rare ops (tests/fuzz_rare_ops.py: the ops, and forms of ops,
tests/fuzz_graphs.py never draws): each random graph's saliency against float64 central
differences of onnx.reference, and its float32 export on ONNX Runtime against the float64 export,
for every method.

The default run checks ONNXATTR_FUZZ_RARE_EXAMPLES graphs of up to 10 ops (default 400, about
12 s on one core); ONNXATTR_EXTENDED=1 adds 2,000 of up to 16 ops (about 100 s). Both are
derandomized, as tests/test_fuzz.py's; ONNXATTR_FUZZ_SEED=<int> explores other graphs. Every bug
found becomes a named case in tests/test_regressions.py.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings

from fuzz_rare_ops import check_rare_model, rare_graphs
from test_fuzz import _seeded, _settings

EXAMPLES = int(os.environ.get("ONNXATTR_FUZZ_RARE_EXAMPLES", "400"))

# numpy's overflow / 0 / 0 warnings: chained Exp, Pow and Reciprocal overflow in the probe values
# and the forward, and an LpNormalization slice of norm 0 has a NaN gradient (README); the checks
# judge those values themselves.
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")


@_seeded
@settings(_settings, max_examples=EXAMPLES)
@given(rare_graphs(max_ops=10))
def test_random_graphs_with_rare_ops(model):
    check_rare_model(model)


@pytest.mark.slow
@_seeded
@settings(_settings, max_examples=2000)
@given(rare_graphs(max_ops=16))
def test_random_graphs_with_rare_ops_extended(model):
    check_rare_model(model)
