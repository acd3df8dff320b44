"""Suite-wide switches: tests marked `slow` run only with ONNXATTR_EXTENDED=1 (see README, Tests)."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.environ.get("ONNXATTR_EXTENDED") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with ONNXATTR_EXTENDED=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
