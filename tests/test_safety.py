"""The remote-code files make no network calls, run no subprocesses, unpickle nothing and read only the model folder."""

import pytest
import torch

from processing_scinterpreter import ScInterpreterInputError
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


def test_a_folder_with_a_pickle_instead_of_safetensors_fails_clearly(saved_tiny_model, tiny_model):
    from modeling_scinterpreter import ScInterpreterForCellAnnotation

    (saved_tiny_model / "model.safetensors").unlink()
    torch.save(tiny_model.state_dict(), saved_tiny_model / "pytorch_model.bin")
    with pytest.raises(ScInterpreterInputError, match="only pickle files .*pytorch_model.bin.* no .safetensors"):
        ScInterpreterForCellAnnotation.from_pretrained(saved_tiny_model)


def test_a_damaged_weights_file_fails_clearly(saved_tiny_model):
    from modeling_scinterpreter import ScInterpreterForCellAnnotation

    weights = saved_tiny_model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ScInterpreterInputError, match="damaged or incomplete"):
        ScInterpreterForCellAnnotation.from_pretrained(saved_tiny_model)


def test_a_config_whose_gene_table_does_not_match_the_weights_fails_clearly(saved_tiny_model):
    import json

    from modeling_scinterpreter import ScInterpreterForCellAnnotation

    config = json.loads((saved_tiny_model / "config.json").read_text())
    config["gene_vocab_size"] += 5
    (saved_tiny_model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ScInterpreterInputError, match="config and the weights come from different models"):
        ScInterpreterForCellAnnotation.from_pretrained(saved_tiny_model)


def test_a_folder_without_config_fails_clearly(tmp_path):
    from modeling_scinterpreter import ScInterpreterForCellAnnotation

    with pytest.raises(ScInterpreterInputError, match="no config.json"):
        ScInterpreterForCellAnnotation.from_pretrained(tmp_path)
