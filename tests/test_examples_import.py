"""Our Example messages: TensorFlow's wire format, loadable beside TensorFlow in either import
order, and nothing heavy imported to write records."""
import importlib.util
import os
import subprocess
import sys

import pytest

ENCODE = """
import sys
from synanno_datagen.record_format import example_pb2
example = example_pb2().Example()
feature = example.features.feature
feature["b"].bytes_list.value.append(b"xyz")
feature["a"].int64_list.value.extend([1, -2, 3])
ours = example.SerializeToString(deterministic=True)
"""
TENSORFLOW = """
import tensorflow as tf
theirs = tf.train.Example()
theirs.features.feature["b"].bytes_list.value.append(b"xyz")
theirs.features.feature["a"].int64_list.value.extend([1, -2, 3])
"""
COMPARE = """
assert ours == theirs.SerializeToString(deterministic=True)
assert list(example_pb2().Example.FromString(ours).features.feature["a"].int64_list.value) == \\
    [1, -2, 3]
print("same")
"""


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout


def test_writing_records_imports_neither_torch_nor_tensorflow():
    out = _run(ENCODE + "print('torch' in sys.modules, 'tensorflow' in sys.modules)")
    assert out.split() == ["False", "False"]


def test_our_messages_load_after_tensorflow_and_write_its_bytes():
    """(Ours first, then TensorFlow: tests/test_loaders.py's TensorFlow process.)"""
    if importlib.util.find_spec("tensorflow") is None:
        if os.environ.get("SYNANNO_REQUIRE_TF") == "1":
            pytest.fail("SYNANNO_REQUIRE_TF=1 but TensorFlow is not installed")
        pytest.skip("the tf extra is not installed")
    assert _run(TENSORFLOW + ENCODE + COMPARE).strip() == "same"
