"""A toy defense kept outside safeft, registered the way any third-party method is: one module and
an entry point in its package's metadata. `install_toy_method(folder)` writes both into `folder`;
a process with `folder` on its PYTHONPATH then has the method "toy" like any built-in one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TOY_MODULE = '''
"""Toy: SFT whose loss is scaled by a factor (a method defined in one file)."""
from dataclasses import dataclass

from safeft.config import option
from safeft.methods import MethodSpec
from safeft.methods.base import MethodConfig
from safeft.methods.sft import SFTTrainer


@dataclass
class ToyConfig(MethodConfig):
    """Toy defense"""

    loss_scale: float = option(1.0, "factor on the loss, s in no paper", range=(0, None))


class ToyTrainer(SFTTrainer):
    """What changes compared with SFT: the loss is multiplied by `loss_scale` (a test fixture)."""

    config_cls = ToyConfig
    needs_harmful = True  # declared, so the align stage must load --harmful-data for it

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        scale = self.method_config.loss_scale
        return (out[0] * scale, out[1]) if return_outputs else out * scale


SPEC = MethodSpec(ToyConfig, ToyTrainer, "align", "new", "toy: SFT with a scaled loss", "1 scaled pass")
'''


def install_toy_method(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "safeft_toy.py").write_text(TOY_MODULE)
    info = folder / "safeft_toy-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: safeft-toy\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[safeft.methods]\ntoy = safeft_toy:SPEC\n")
    return folder


def run_with(folder: Path | None, args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python args...` in a fresh process, with `folder` (if any) first on the path."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    path = [str(folder)] if folder else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*path, src, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )
