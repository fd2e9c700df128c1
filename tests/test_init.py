"""A fresh model initialises every parameter as the original code does, group by group.

Every parameter of Hugging Face's freshly initialised model of the same config is paired with ours
by the converter's name mapping and falls in exactly one group below. A group is either
deterministic (zeros, ones, the deformable sampling grid), compared value by value with HF's, or
random, compared by its statistics with a reference sample of the same shapes. The reference is
HF's own values where HF initialises as the original code does, else the original scheme drawn
by PyTorch itself (its default modules, `torch.nn.init`) on HF's shapes; m2f_jax/modeling/
initializers.py lists where HF departs from the original.

Before pooling, each tensor is divided by its scheme's scale (the uniform bound or the normal's
std, a function of the torch shape), so a group holds identically distributed values even when
its tensors have different fans. Both samples must then agree in mean and std (within K standard
errors of the difference), in distribution (two-sample Kolmogorov-Smirnov), and for uniform
schemes lie within the bound and reach close to it. The reference sample passes the same bound
checks, which tests the scale formulas against PyTorch. The group sizes make a scheme with a
different scale (lecun normal for xavier, fan-out for fan-in, a split in_proj's fans) fail by many
standard errors, while a correct one fails a check by chance with probability at most 1e-6 (the
Kolmogorov-Smirnov check; about 1e-9 for the others).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable

import jax
import numpy as np
import pytest
from flax import nnx

from m2f_jax.conversion.hf import IGNORED_KEYS, hf_to_flax
from m2f_jax.modeling.mask2former import Mask2FormerForUniversalSegmentation
from m2f_jax.weights import model_params

from helpers import tiny_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

K = 6.0  # standard errors allowed for mean and std
KS_ALPHA = 1e-6  # significance of the Kolmogorov-Smirnov check

# Enough labels for a class-predictor bias of 134 values, window 7 for (13*13)-row position tables,
# and the decoder's input projections switched on.
CONFIG = tiny_config(window_size=7, num_labels=133, enforce_input_projection=True)


# ------------------------------------------------------------------------------ schemes, by torch shape
def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def weight_shape(name: str, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """The shape of the weight a parameter belongs to (itself for a weight)."""
    return shapes[re.sub(r"\.bias$", ".weight", name)]


def torch_default_bound(name, shapes):  # kaiming_uniform(a=sqrt(5)) weights and the default bias
    return 1.0 / math.sqrt(fans(weight_shape(name, shapes))[0])


def xavier_bound(name, shapes):
    fan_in, fan_out = fans(shapes[name])
    return math.sqrt(6.0 / (fan_in + fan_out))


def fused_qkv_bound(name, shapes):  # one third of a (3d, d) in_proj_weight
    fan_in, fan_out = fans(shapes[name])
    return math.sqrt(6.0 / (fan_in + 3 * fan_out))


def c2_xavier_bound(name, shapes):  # kaiming_uniform(a=1)
    return math.sqrt(3.0 / fans(shapes[name])[0])


def constant(value: float):
    return lambda name, shapes: value


# ------------------------------------------------------------------------------ reference samples
def torch_default(name, shapes):
    """A freshly constructed nn.Linear / nn.Conv2d of the weight's shape: its weight or bias."""
    shape = weight_shape(name, shapes)
    module = torch.nn.Linear(shape[1], shape[0]) if len(shape) == 2 else torch.nn.Conv2d(shape[1], shape[0], shape[2:])
    return module.bias if name.endswith(".bias") else module.weight


def xavier(name, shapes):
    return torch.nn.init.xavier_uniform_(torch.empty(shapes[name]))


def c2_xavier(name, shapes):
    return torch.nn.init.kaiming_uniform_(torch.empty(shapes[name]), a=1)


def trunc_normal(name, shapes):
    return torch.nn.init.trunc_normal_(torch.empty(shapes[name]), std=0.02)


def multihead_in_proj_third(name, shapes):
    """The q, k or v third of a freshly constructed nn.MultiheadAttention's in_proj_weight."""
    d = shapes[name][0]
    index = "qkv".index(re.search(r"\.([qkv])_proj\.weight$", name)[1])
    return torch.nn.MultiheadAttention(d, CONFIG.num_attention_heads).in_proj_weight[index * d : (index + 1) * d]


@dataclasses.dataclass(frozen=True)
class Group:
    name: str
    pattern: str  # regex on HF's parameter names
    kind: str  # "zeros", "ones", "grid" (compared with HF value by value), "uniform" or "normal"
    scale: Callable | None = None  # (name, shapes) -> the uniform bound or the normal std
    reference: Callable | None = None  # (name, shapes) -> a torch sample of the original scheme; None: HF's values


SW = r"^model\.pixel_level_module\.encoder\.swin\."
PD = r"^model\.pixel_level_module\.decoder\."
TD = r"^model\.transformer_module\."
SWIN_LINEAR = r"(q_proj|k_proj|v_proj|o_proj|fc1|fc2|reduction)"
SWIN_NORM = r"(embeddings\.norm|layernorm_before|layernorm_after|downsample\.norm)"
HIDDEN_NORM = r"^model\.pixel_level_module\.encoder\.hidden_states_norms\.stage\d"
GROUP_NORM = r"(input_projections\.\d\.1|adapter_\d\.1|layer_\d\.1)"
DECODER_NORM = r"(layers\.\d+\.\w+_layer_norm|layernorm)"

GROUPS = (
    # Swin
    Group("swin patch-embedding kernel", SW + r".*patch_embeddings\.projection\.weight$", "uniform",
          torch_default_bound, torch_default),
    Group("swin patch-embedding bias", SW + r".*patch_embeddings\.projection\.bias$", "uniform",
          torch_default_bound, torch_default),
    Group("swin linear kernels", SW + rf".*\.{SWIN_LINEAR}\.weight$", "normal", constant(0.02)),
    Group("swin linear biases", SW + rf".*\.{SWIN_LINEAR}\.bias$", "zeros"),
    Group("swin relative position tables", SW + r".*relative_position_bias_table$", "normal", constant(0.02),
          trunc_normal),
    Group("swin LayerNorm scales", rf"({SW}.*{SWIN_NORM}|{HIDDEN_NORM})\.weight$", "ones"),
    Group("swin LayerNorm biases", rf"({SW}.*{SWIN_NORM}|{HIDDEN_NORM})\.bias$", "zeros"),
    # pixel decoder
    Group("pixel decoder input projection kernels", PD + r"input_projections\.\d\.0\.weight$", "uniform",
          xavier_bound, xavier),
    Group("pixel decoder conv biases", PD + r"(input_projections\.\d\.0|mask_projection)\.bias$", "zeros"),
    Group("pixel decoder GroupNorm scales", PD + GROUP_NORM + r"\.weight$", "ones"),
    Group("pixel decoder GroupNorm biases", PD + GROUP_NORM + r"\.bias$", "zeros"),
    Group("pixel decoder level embedding", PD + r"level_embed$", "normal", constant(1.0)),
    Group("pixel decoder c2_xavier_fill convs", PD + r"(adapter_\d\.0|layer_\d\.0|mask_projection)\.weight$",
          "uniform", c2_xavier_bound, c2_xavier),
    Group("deformable sampling_offsets kernels", PD + r".*self_attn\.sampling_offsets\.weight$", "zeros"),
    Group("deformable sampling_offsets biases", PD + r".*self_attn\.sampling_offsets\.bias$", "grid"),
    Group("deformable attention_weights", PD + r".*self_attn\.attention_weights\.(weight|bias)$", "zeros"),
    Group("deformable value/output projection kernels", PD + r".*self_attn\.(value|output)_proj\.weight$",
          "uniform", xavier_bound),
    Group("deformable value/output projection biases", PD + r".*self_attn\.(value|output)_proj\.bias$", "zeros"),
    Group("pixel decoder encoder FFN kernels", PD + r"encoder\.layers\.\d+\.fc[12]\.weight$", "uniform",
          xavier_bound, xavier),
    Group("pixel decoder encoder FFN biases", PD + r"encoder\.layers\.\d+\.fc[12]\.bias$", "uniform",
          torch_default_bound, torch_default),
    Group("pixel decoder encoder LayerNorm scales", PD + r"encoder\.layers\.\d+\.\w+_layer_norm\.weight$", "ones"),
    Group("pixel decoder encoder LayerNorm biases", PD + r"encoder\.layers\.\d+\.\w+_layer_norm\.bias$", "zeros"),
    # transformer decoder
    Group("query and level embeddings", TD + r"(queries_embedder|queries_features|level_embed)\.weight$", "normal",
          constant(1.0)),
    Group("decoder input projection kernels", TD + r"input_projections\.\d\.weight$", "uniform", c2_xavier_bound,
          c2_xavier),
    Group("decoder input projection biases", TD + r"input_projections\.\d\.bias$", "zeros"),
    Group("decoder cross-attention in_proj", TD + r".*cross_attn\.in_proj_weight$", "uniform", xavier_bound),
    Group("decoder self-attention q/k/v kernels", TD + r".*self_attn\.[qkv]_proj\.weight$", "uniform",
          fused_qkv_bound, multihead_in_proj_third),
    Group("decoder attention output kernels", TD + r".*(self_attn|cross_attn)\.out_proj\.weight$", "uniform",
          xavier_bound),
    Group("decoder attention biases",
          TD + r".*(self_attn\.(q|k|v|out)_proj\.bias|cross_attn\.(in_proj_bias|out_proj\.bias))$", "zeros"),
    Group("decoder FFN kernels", TD + r"decoder\.layers\.\d+\.fc[12]\.weight$", "uniform", xavier_bound),
    Group("decoder FFN biases", TD + r"decoder\.layers\.\d+\.fc[12]\.bias$", "uniform", torch_default_bound,
          torch_default),
    Group("decoder LayerNorm scales", TD + r"decoder\." + DECODER_NORM + r"\.weight$", "ones"),
    Group("decoder LayerNorm biases", TD + r"decoder\." + DECODER_NORM + r"\.bias$", "zeros"),
    Group("mask embedder kernels", TD + r".*mask_embedder\.\d\.0\.weight$", "uniform", torch_default_bound),
    Group("mask embedder biases", TD + r".*mask_embedder\.\d\.0\.bias$", "uniform", torch_default_bound),
    # head
    Group("class predictor kernel", r"^class_predictor\.weight$", "uniform", torch_default_bound, torch_default),
    Group("class predictor bias", r"^class_predictor\.bias$", "uniform", torch_default_bound, torch_default),
)  # fmt: skip


# ------------------------------------------------------------------------------ the two models
@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    hf_config = transformers.Mask2FormerConfig.from_dict(CONFIG.to_hf_dict())
    hf_model = transformers.Mask2FormerForUniversalSegmentation(hf_config)
    theirs = {
        name: p.detach().numpy().copy()
        for name, p in hf_model.named_parameters()
        if not any(re.search(pattern, name) for pattern in IGNORED_KEYS)
    }
    # The "rbg" generator: the same initialisers with half the XLA compile time of the default one
    # (most of this test's time is compiling the random draws, one program per parameter shape).
    rngs = nnx.Rngs(jax.random.key(0, impl="rbg"))
    ours = model_params(Mask2FormerForUniversalSegmentation(CONFIG, rngs=rngs))
    return theirs, ours


def group_members(theirs: dict[str, np.ndarray]) -> dict[Group, list[str]]:
    """HF's parameter names of each group; fails unless every parameter falls in exactly one group."""
    members = {group: [] for group in GROUPS}
    problems = []
    for name in theirs:
        matching = [group for group in GROUPS if re.search(group.pattern, name)]
        if len(matching) != 1:
            problems.append(f"{name}: in {len(matching)} groups {[g.name for g in matching]}")
        else:
            members[matching[0]].append(name)
    problems += [f"group {group.name!r} matches no parameter" for group, names in members.items() if not names]
    assert not problems, "parameters not in exactly one group:\n" + "\n".join(problems)
    return members


def test_every_parameter_is_in_one_group(models):
    theirs, ours = models
    group_members(theirs)
    covered = [n for name, array in theirs.items() for n in hf_to_flax({name: array})[0]]
    assert sorted(covered) == sorted(ours), (
        f"not paired with an HF parameter: {sorted(set(ours) - set(covered))}; "
        f"HF's mapped to none of ours: {sorted(set(covered) - set(ours))}"
    )


# ------------------------------------------------------------------------------ the statistics
def std_error_of_std(x: np.ndarray) -> float:
    """Standard error of the sample std: std * sqrt((kurtosis - 1) / 4n)."""
    centred = x - x.mean()
    var = np.mean(centred**2)
    kurtosis = np.mean(centred**4) / var**2
    return math.sqrt(var * (kurtosis - 1.0) / (4 * x.size))


def ks_statistic(x: np.ndarray, y: np.ndarray) -> float:
    """Largest gap between the two empirical distribution functions."""
    grid = np.sort(np.concatenate([x, y]))  # sorted, so that searchsorted walks the arrays in order
    cdf_x = np.searchsorted(np.sort(x), grid, side="right") / x.size
    cdf_y = np.searchsorted(np.sort(y), grid, side="right") / y.size
    return float(np.max(np.abs(cdf_x - cdf_y)))


def compare_random(group: Group, ours: np.ndarray, ref: np.ndarray) -> list[str]:
    """`ours` and `ref` divided by their scheme's scale; the failed checks, described."""
    n, m = ours.size, ref.size
    out = []
    mean_tol = K * math.sqrt(ours.var() / n + ref.var() / m)
    if abs(ours.mean() - ref.mean()) > mean_tol:
        out.append(f"mean {ours.mean():+.4f} vs reference {ref.mean():+.4f} (tolerance {mean_tol:.4f})")
    std_tol = K * math.hypot(std_error_of_std(ours), std_error_of_std(ref))
    if abs(ours.std() - ref.std()) > std_tol:
        out.append(f"std {ours.std():.4f} vs reference {ref.std():.4f} (tolerance {std_tol:.4f})")
    ks_tol = math.sqrt(-math.log(KS_ALPHA / 2) / 2) * math.sqrt((n + m) / (n * m))
    ks = ks_statistic(ours, ref)
    if ks > ks_tol:
        out.append(f"Kolmogorov-Smirnov distance {ks:.4f} > {ks_tol:.4f}")
    if group.kind == "uniform":
        for who, x in (("ours", ours), ("reference", ref)):
            top = float(np.max(np.abs(x)))
            # the largest of n uniform |values| stays below 1 - 20/n with probability e^-20
            if not 1.0 - 20.0 / x.size <= top <= 1.0 + 1e-6:
                out.append(f"{who}: largest |value| {top:.4f} of the bound 1 (n={x.size})")
    return out


def test_each_group_initialises_as_the_original(models):
    theirs, ours = models
    shapes = {name: tuple(array.shape) for name, array in theirs.items()}
    torch.manual_seed(1)  # the reference samples drawn by PyTorch
    failures = []
    for group, names in group_members(theirs).items():
        ours_values, ref_values = [], []
        for name in names:
            mapped = hf_to_flax({name: theirs[name]})[0]  # our name(s) -> HF's value in our layout
            if group.kind in ("zeros", "ones", "grid"):
                for ours_name, value in mapped.items():
                    if group.kind == "grid":
                        # PyTorch's float32 cos/sin leave a few entries some ulps from the exact grid
                        ok = np.allclose(ours[ours_name], value, rtol=1e-6, atol=1e-6)
                    else:
                        expected = 1.0 if group.kind == "ones" else 0.0
                        ok = np.array_equal(ours[ours_name], value) and np.all(value == expected)
                    if not ok:
                        failures.append(f"{group.name}: {ours_name} differs from HF's {name}")
                continue
            scale = group.scale(name, shapes)
            ref = theirs[name] if group.reference is None else group.reference(name, shapes).detach().numpy()
            assert ref.shape == shapes[name], (group.name, name, ref.shape)
            ref_values.append(ref.ravel() / scale)
            ours_values.append(np.concatenate([ours[n].ravel() for n in mapped]) / scale)
        if ref_values:
            for problem in compare_random(
                group, np.concatenate(ours_values).astype(np.float64), np.concatenate(ref_values).astype(np.float64)
            ):
                failures.append(f"{group.name} ({len(names)} tensors): {problem}")
    assert not failures, "initialisation differs from the original scheme:\n" + "\n".join(failures)
