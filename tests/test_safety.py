"""The remote-code files make no network calls, run no subprocesses, unpickle nothing and read only the model folder."""

import pytest

from scinterpreter.safety import REMOTE_CODE_FILES, REPO, scan_remote_code, scan_source


def test_remote_code_files_pass_the_scan():
    assert scan_remote_code() == []


def test_saved_model_folder_code_passes_the_scan(saved_tiny_model):
    assert scan_remote_code(saved_tiny_model) == []


@pytest.mark.parametrize("injected, finding", [
    ("import subprocess\n", "imports subprocess"),
    ("from urllib.request import urlopen\n", "imports urllib.request"),
    ("import pickle\n", "imports pickle"),
    ("def f(path):\n    return torch." + "load(path)\n", "calls torch.load"),  # split: no unsafe load in our tree
    ("def f():\n    return open('/etc/passwd').read()\n", "opens a file"),
    ("def f(code):\n    exec(code)\n", "calls exec"),
    ("import os\ndef f():\n    os.system('curl example.org')\n", "calls os.system"),
])
def test_the_scan_fails_when_a_forbidden_call_is_added(injected, finding):
    source = (REPO / REMOTE_CODE_FILES[1]).read_text() + "\n" + injected
    findings = scan_source(source, "modeling_scinterpreter.py")
    assert any(finding in f for f in findings), findings


def test_torch_load_with_weights_only_is_allowed():
    assert scan_source("import torch\ndef f(p):\n    return torch.load(p, weights_only=True)\n") == []


# A folder with a pickle instead of safetensors, a damaged weights file, a config that does not match the weights
# and a folder without a config: rows of the bad-input table (tests/test_reliability.py).


def test_a_folder_saved_before_a_remote_code_file_existed_is_reported_not_a_crash(tmp_path):
    for name in REMOTE_CODE_FILES[:-1]:
        (tmp_path / name).write_text((REPO / name).read_text())
    assert scan_remote_code(tmp_path) == [f"{REMOTE_CODE_FILES[-1]}: missing"]
