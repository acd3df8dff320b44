"""Suite-wide switches: tests marked `slow` run only with ONNXATTR_EXTENDED=1 (see README, Tests);
a crash in native code reports the Python stack of the thread that crashed; triton loads before
TensorFlow can."""

from __future__ import annotations

import faulthandler
import os

import pytest

try:  # Importing triton (torch._dynamo, torchvision.ops and timm pull it in) after TensorFlow has
    # loaded segfaults (triton 3.8, tensorflow 2.21): a test importing torchvision after a Keras
    # test crashed the whole run (exit 139; reproduced with `import tensorflow; import triton`).
    # Loaded first, both work.
    import triton  # noqa: F401
except ImportError:  # (a CPU-only torch has no triton: nothing to order)
    pass


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    """pytest's faulthandler dumps every thread's stack on a segfault; CI's log of one such crash
    kept only the first few threads (ONNX Runtime's and PyTorch's workers, no Python frames) and
    cut the crashing one. Dump that thread alone, to the same (uncaptured) stderr copy."""
    try:
        from _pytest.faulthandler import fault_handler_stderr_fd_key
    except ImportError:
        return
    fd = config.stash.get(fault_handler_stderr_fd_key, None)
    if fd is not None:
        faulthandler.enable(file=fd, all_threads=False)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("ONNXATTR_EXTENDED") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with ONNXATTR_EXTENDED=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
