"""Encoding Examples must not pull in PyTorch (the tfrecord package imports it when installed)."""
import subprocess
import sys

CODE = """
import sys
import numpy as np
from synanno_datagen.transforms.examples import example_pb2
example = example_pb2().Example()
example.features.feature["x"].int64_list.value.append(3)
assert example.SerializeToString()
print("torch" in sys.modules)
"""


def test_encoding_an_example_does_not_import_torch():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_tfrecords_torch_reader_still_imports_afterwards():
    code = CODE + "import importlib.util\n" \
        "if importlib.util.find_spec('torch'):\n" \
        "    from tfrecord.torch.dataset import TFRecordDataset\n" \
        "    import torch; print(hasattr(torch, 'tensor'))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == "False" and out[1:] in ([], ["True"])
