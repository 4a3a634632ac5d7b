"""The example script and the README's first usage block run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def test_quickstart_routes_each_size_to_its_path():
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    paths = re.findall(r"^\s*(\d+)×(\d+)\s+-> path\s+(\d+)", done.stdout, flags=re.M)
    assert [(int(w), int(h), int(p)) for w, h, p in paths] == [
        (9, 11, 14), (92, 112, 112), (20, 24, 28), (12, 15, 28), (46, 56, 112), (6, 7, 7)]
    assert "cosine similarities" in done.stdout


def _readme_block(heading: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split(f"\n{heading}\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.S)[1]


def test_readme_usage_block_runs():
    rng = np.random.default_rng(0)
    names = {
        "img_20x24": Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)),
        "img_112x112": rng.integers(0, 256, (112, 112, 3), dtype=np.uint8),
        "img_9x9": torch.rand(3, 9, 9),
    }
    exec(compile(_readme_block("## Use"), "README.md#use", "exec"), names)  # noqa: S102 - our own README
    assert names["emb"].shape == (4, 512)
    assert names["vecs"].shape == (3, 512)
    torch.testing.assert_close(names["vecs"].norm(dim=1), torch.ones(3))
