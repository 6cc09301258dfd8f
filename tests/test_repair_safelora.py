"""SafeLoRA: the projection against hand-worked tensors and against the reference's own numbers.

The golden file holds fixed tiny tensors (alignment changes V, LoRA pairs A and B) and what
IBM/SafeLoRA `model.py` @d81fda1 computed on them (its cosines and its final B of every layer, in
number and threshold mode); tests/fixtures/reference/safelora.json names the command (scripts/reference_golden_safelora.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from safeft.errors import SafeftError
from safeft.repair.safelora import SafeLoRAConfig, alignment_matrix, project

GOLDEN = Path(__file__).parent / "fixtures" / "reference"


def test_alignment_matrix_is_v_vt_over_frobenius_norm():
    v = torch.tensor([[2.0, 0.0], [0.0, 0.0]])  # ‖V‖_F = 2, V Vᵀ = [[4, 0], [0, 0]]
    torch.testing.assert_close(alignment_matrix(v), torch.tensor([[2.0, 0.0], [0.0, 0.0]]))
    v = torch.tensor([[1.0, 1.0], [1.0, -1.0]])  # V Vᵀ = 2 I, ‖V‖_F = 2
    torch.testing.assert_close(alignment_matrix(v), torch.eye(2))


def test_alignment_matrix_of_an_unchanged_weight_is_an_error():
    with pytest.raises(SafeftError, match="did not change"):
        alignment_matrix(torch.zeros(2, 2))


def _pair(a_col: float, b_col: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A = I, B = [[a, 0], [b, 0]]: with C = E11, cos(C·B·A, B·A) = a / sqrt(a² + b²)."""
    return torch.eye(2), torch.tensor([[a_col, 0.0], [b_col, 0.0]])


C = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
LAYERS = {"x": _pair(1.0, 0.0), "y": _pair(3.0, 4.0), "z": _pair(4.0, 3.0), "w": _pair(3.0, 4.0)}
COSINES = {"x": 1.0, "y": 0.6, "z": 0.8, "w": 0.6}


def test_threshold_mode_projects_every_layer_at_or_below_the_threshold():
    result = project(LAYERS, dict.fromkeys(LAYERS, C), SafeLoRAConfig(select="threshold", threshold=0.7))
    assert result.cosines == pytest.approx(COSINES)
    assert sorted(result.projected) == ["w", "y"]
    torch.testing.assert_close(result.new_b["y"], torch.tensor([[3.0, 0.0], [0.0, 0.0]]))  # C·B


def test_number_mode_takes_the_k_lowest_cosines_with_ties():
    one = project(LAYERS, dict.fromkeys(LAYERS, C), SafeLoRAConfig(select="number", num_proj_layers=3))
    assert sorted(one.projected) == ["w", "y", "z"] and one.threshold == pytest.approx(0.8)
    # k = 1: the lowest cosine is 0.6, shared by two layers; the reference's threshold takes both.
    tie = project(LAYERS, dict.fromkeys(LAYERS, C), SafeLoRAConfig(select="number", num_proj_layers=1))
    assert sorted(tie.projected) == ["w", "y"]
    every = project(LAYERS, dict.fromkeys(LAYERS, C), SafeLoRAConfig(select="number", num_proj_layers=10))
    assert sorted(every.projected) == sorted(LAYERS)


def test_config_needs_both_models_or_neither():
    with pytest.raises(Exception, match="give both or neither"):
        SafeLoRAConfig.from_dict({"aligned_model": "a"})


@pytest.mark.parametrize("case", ["number10", "number3", "threshold0.5", "threshold0.35"])
def test_matches_the_reference_implementation(case):
    tensors = load_file(GOLDEN / "safelora.safetensors")
    meta = json.loads((GOLDEN / "safelora.json").read_text())["cases"][case]
    layers = sorted(k.removeprefix("delta.") for k in tensors if k.startswith("delta."))
    # the reference lists its cosines in module order: layers.0.q, k, v, layers.1.q, ...
    order = sorted(layers, key=lambda n: (int(n.split(".")[2]), ["q_proj", "k_proj", "v_proj"].index(n[-6:])))
    pairs = {n: (tensors[f"input.{n}.lora_A.weight"], tensors[f"input.{n}.lora_B.weight"]) for n in layers}
    matrices = {n: alignment_matrix(tensors[f"delta.{n}"]) for n in layers}
    ref = meta["config"]
    config = SafeLoRAConfig(
        select=ref["select_layers_type"], num_proj_layers=ref["num_proj_layers"], threshold=ref["threshold"]
    )
    result = project(pairs, matrices, config)
    assert [result.cosines[n] for n in order] == pytest.approx(meta["cosines"], abs=1e-5)
    for n in layers:
        expected_b = tensors[f"{case}.{n}.lora_B.weight"]
        torch.testing.assert_close(result.new_b.get(n, pairs[n][1]), expected_b, atol=1e-6, rtol=1e-5)
    assert 0 < len(result.projected) < len(layers)  # the case exercises both outcomes
