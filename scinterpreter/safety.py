"""Static checks of the Hub remote-code files: no network, no subprocesses, no unpickling, no stray file reads."""

import ast
from pathlib import Path

# The top-level files that are the model: installed as modules (pyproject.toml's py-modules), copied into every saved
# folder (build.save_model_folder, models.path) and run as Hub remote code; the other lists derive from this one.
REMOTE_CODE_FILES = ("configuration_scinterpreter.py", "modeling_scinterpreter.py", "loading_scinterpreter.py",
                     "gene_matching_scinterpreter.py", "features_scinterpreter.py", "processing_scinterpreter.py",
                     "pipeline_scinterpreter.py")
FORBIDDEN_MODULES = {"subprocess", "socket", "urllib", "http", "requests", "httpx", "aiohttp", "ftplib", "smtplib",
                     "webbrowser", "huggingface_hub", "pickle", "dill", "marshal", "shelve", "joblib", "ctypes",
                     "multiprocessing", "pty", "shutil"}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "os.system", "os.popen", "os.execv", "os.execve",
                   "os.spawnv", "os.fork", "os.remove", "os.unlink", "os.rmdir", "torch.load", "np.load",
                   "numpy.load", "urlopen"}
# The only function that reads a file itself (loading_scinterpreter.py): the folder's config.json and weight headers.
FILE_READERS = {"_check_model_folder"}
REPO = Path(__file__).resolve().parent.parent


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def scan_source(source: str, filename: str = "<source>") -> list[str]:
    """Findings (`file:line: what`) for one file's source; an empty list means it passed."""
    findings = []
    tree = ast.parse(source, filename)
    parents = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node

    def enclosing_function(node):
        while node in parents:
            node = parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return node.name
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            modules = []
        for module in modules:
            if module.split(".")[0] in FORBIDDEN_MODULES:
                findings.append(f"{filename}:{node.lineno}: imports {module}")
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name in FORBIDDEN_CALLS or name.split(".")[-1] in {"urlopen", "system", "popen"}:
                weights_only = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True
                                   for k in node.keywords)
                if not (name == "torch.load" and weights_only):
                    findings.append(f"{filename}:{node.lineno}: calls {name}")
            if name in {"open", "io.open", "os.open"} and enclosing_function(node) not in FILE_READERS:
                findings.append(f"{filename}:{node.lineno}: opens a file outside {sorted(FILE_READERS)}")
    return findings


def scan_remote_code(folder=REPO) -> list[str]:
    """Scans the remote-code files in `folder` (the repo, or a saved model folder; one saved before a file existed
    lacks it, and a missing file is reported, not scanned)."""
    findings = []
    for name in REMOTE_CODE_FILES:
        path = Path(folder) / name
        if not path.exists():
            findings.append(f"{name}: missing")
            continue
        findings += scan_source(path.read_text(encoding="utf-8"), name)
    return findings
