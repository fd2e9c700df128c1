"""The shipped recipe configs (m2f_jax/configs/*.py): each builds for every backbone argument, passes the
whole config check against a tiny data set written in its source's real layout, and holds the recipe
constants of reference/FACTS.md. No model is built, nothing is compiled."""

from __future__ import annotations

import importlib
import os
import shutil

import pytest
from absl import flags
from ml_collections import config_flags
from test_sources_coco import _write_instances
from test_sources_semantic import _write_ade, _write_cityscapes

from m2f_jax import configs
from m2f_jax.data import synthetic
from m2f_jax.training.validation import FIELDS, problems

ARGS = ("swin_t", "swin_s", "swin_b", "swin_l", "r50", "r101")
RECIPES = (
    "coco_panoptic", "coco_instance", "ade20k_semantic", "cityscapes_semantic", "cityscapes_panoptic",
    "cityscapes_instance",
)  # fmt: skip
PRESET = {
    "swin_t": "swin-tiny", "swin_s": "swin-small", "swin_b": "swin-base-IN21k", "swin_l": "swin-large",
    "r50": "resnet-50", "r101": "resnet-101",
}  # fmt: skip
# The ImageNet backbone each recipe starts from: the original's (torchvision's ResNets as timm publishes them).
IMAGENET = {
    "swin_t": "microsoft/swin-tiny-patch4-window7-224", "swin_s": "microsoft/swin-small-patch4-window7-224",
    "swin_b": "microsoft/swin-base-patch4-window12-384-in22k",
    "swin_l": "microsoft/swin-large-patch4-window12-384-in22k",
    "r50": "timm/resnet50.tv_in1k", "r101": "timm/resnet101.tv_in1k",
}  # fmt: skip

# (source, task, default root, preset dataset) of each recipe.
DATA = {
    "coco_panoptic": ("coco_panoptic", "panoptic", "data/coco", "coco"),
    "coco_instance": ("coco_instances", "instance", "data/coco", "coco"),
    "ade20k_semantic": ("ade20k", "semantic", "data/ADEChallengeData2016", "ade"),
    "cityscapes_semantic": ("cityscapes", "semantic", "data/cityscapes", "cityscapes"),
    "cityscapes_panoptic": ("cityscapes", "panoptic", "data/cityscapes", "cityscapes"),
    "cityscapes_instance": ("cityscapes", "instance", "data/cityscapes", "cityscapes"),
}

# pycocotools' decode warns about numpy 2's copy keyword; nothing here to act on
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def load(name: str, arg: str | None = None):
    module = importlib.import_module(f"m2f_jax.configs.{name}")
    return module.get_config() if arg is None else module.get_config(arg)


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, str]:
    """Tiny train and val splits in each source's on-disk layout, by source name (training opens the
    train split, evaluation the val split)."""
    coco_panoptic = tmp_path_factory.mktemp("coco_panoptic")
    for split in ("train", "val"):
        synthetic.write_coco_panoptic(coco_panoptic, split, 2, image_size=(32, 32))
    coco_instances = tmp_path_factory.mktemp("coco_instances")
    _write_instances(coco_instances)
    shutil.copytree(coco_instances / "train2017", coco_instances / "val2017")
    shutil.copy(coco_instances / "annotations" / "instances_train2017.json",
                coco_instances / "annotations" / "instances_val2017.json")  # fmt: skip
    return {
        "coco_panoptic": str(coco_panoptic),
        "coco_instances": str(coco_instances),
        "ade20k": _write_ade(tmp_path_factory.mktemp("ade"))[0],
        "cityscapes": _write_cityscapes(tmp_path_factory.mktemp("cityscapes")),
    }


def test_every_shipped_recipe_is_tested():
    assert set(configs.names()) == {*RECIPES, "synthetic"}


@pytest.mark.parametrize("arg", ARGS)
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_is_valid_on_its_data(name, arg, roots):
    c = load(name, arg)
    source, task, root, dataset = DATA[name]
    assert (c.data.source, c.task, c.data.options.root) == (source, task, root)
    assert c.model.preset == f"{PRESET[arg]}-{dataset}-{task}"
    c.data.options.root = roots[source]
    assert problems(c, model=False) == []
    assert problems(c) == []  # the preset's config too (max_instances <= num_queries), without building it


@pytest.mark.parametrize("name", RECIPES)
def test_default_argument_is_swin_t_and_others_are_refused(name):
    assert load(name).to_dict() == load(name, "swin_t").to_dict()
    with pytest.raises(ValueError, match="'swin_t', 'swin_s', 'swin_b', 'swin_l', 'r50', 'r101'"):
        load(name, "resnet50")


def test_backbone_fields_follow_the_preset():
    """A ResNet preset's config has the ResNet fields; a Swin field there, or a ResNet field without a
    preset (model.* then builds a Swin), is refused by name before any data is opened."""
    c = load("coco_panoptic", "r50")
    assert not {"embed_dim", "num_heads", "window_size", "drop_path_rate"} & set(c.model)
    c.model.embed_dim = 96
    assert problems(c) == [
        "model.embed_dim is a Swin backbone field, but model.preset 'resnet-50-coco-panoptic' has a ResNet "
        "backbone, whose fields are model.embedding_size, model.hidden_sizes, model.depths"
    ]
    c = load("coco_panoptic", "swin_t")
    c.model.preset, c.model.hidden_sizes = "", (256, 512, 1024, 2048)
    (found,) = problems(c)
    assert found.startswith("model.hidden_sizes is a ResNet backbone field: without model.preset")
    assert "a ResNet model needs a ResNet preset (e.g. 'resnet-50-coco-panoptic'" in found


@pytest.mark.parametrize("name", RECIPES)
def test_missing_data_root_is_named(name, tmp_path):
    c = load(name)
    missing = str(tmp_path / "not_downloaded")
    c.data.options.root = missing
    found = problems(c, model=False)
    assert len(found) == 1 and missing in found[0] and found[0].startswith("data.options"), found


def _expected(name: str, arg: str) -> dict:
    """The recipe constants of reference/FACTS.md (and detectron2's Cityscapes settings)."""
    large = arg == "swin_l"
    queries = 200 if large and DATA[name][1] != "semantic" else 100
    common = {
        "batch_size": 16, "compute_dtype": "bfloat16", "optimizer.learning_rate": 1e-4,
        "optimizer.weight_decay": 0.05, "optimizer.backbone_multiplier": 0.1, "optimizer.clip_norm": 0.01,
        "optimizer.warmup_steps": 0, "optimizer.accumulation_steps": 1, "loss.class_weight": 2.0,
        "loss.mask_weight": 5.0, "loss.dice_weight": 5.0, "loss.no_object_weight": 0.1, "loss.num_points": 12544,
        "loss.oversample_ratio": 3.0, "loss.importance_sample_ratio": 0.75, "loss.auxiliary": True,
        "model.num_queries": queries, "data.augment.flip": True, "data.augment.max_scale": 2.0,
        "model.backbone_init": IMAGENET[arg],
    }  # fmt: skip
    if arg.startswith("swin"):
        common["model.drop_path_rate"] = 0.3
    else:  # detectron2's R50 / R101 (stem 64, bottleneck stages 256..2048)
        depths = (3, 4, 6, 3) if arg == "r50" else (3, 4, 23, 3)
        common.update(
            {"model.depths": depths, "model.hidden_sizes": (256, 512, 1024, 2048), "model.embedding_size": 64}
        )
    if name.startswith("coco"):
        return {
            **common, "steps": 737_500 if large else 368_750, "optimizer.schedule": "multistep",
            "optimizer.milestones": (0.889, 0.963), "optimizer.gamma": 0.1, "data.augment.kind": "lsj",
            "data.augment.crop_size": (1024, 1024), "data.augment.min_scale": 0.1, "data.max_instances": queries,
            "remat": "full",
        }  # fmt: skip
    semantic = {
        **common, "optimizer.schedule": "poly", "optimizer.poly_power": 0.9, "data.augment.kind": "semantic",
        "data.augment.min_scale": 0.5, "data.augment.photometric": True, "data.augment.max_category_area": 1.0,
        "remat": "none",
    }  # fmt: skip
    if name == "ade20k_semantic":
        crop = 640 if arg in ("swin_b", "swin_l") else 512  # Swin-B/L pretrained at 384
        return {
            **semantic, "steps": 160_000, "data.augment.crop_size": (crop, crop), "data.augment.base_size": crop,
            "data.augment.max_size": 4 * crop, "data.max_instances": 100,
        }  # fmt: skip
    return {
        **semantic, "steps": 90_000, "data.augment.crop_size": (512, 1024), "data.augment.base_size": 1024,
        "data.augment.max_size": 4096, "data.max_instances": 19 if name == "cityscapes_semantic" else queries,
    }  # fmt: skip


@pytest.mark.parametrize("arg", ARGS)
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_constants(name, arg):
    c = load(name, arg)
    for field, value in _expected(name, arg).items():
        node = c
        for part in field.split("."):
            node = node[part]
        got = tuple(node) if isinstance(node, list | tuple) else node
        assert got == value, f"{name}:{arg} {field} = {got!r}, FACTS.md says {value!r}"


@pytest.mark.parametrize("name", RECIPES)
def test_docstring_names_data_result_and_command(name):
    module = importlib.import_module(f"m2f_jax.configs.{name}")
    source, _, root, _ = DATA[name]
    doc = module.__doc__
    for expected in (f"`{source}` source", root, "docs/data.md", f"python train.py --config configs/{name}.py:"):
        assert expected in doc, f"{name}'s docstring lacks {expected!r}"


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # ml_collections' loader
def test_command_line_argument_and_overrides(roots):
    """`--config FILE:ARG` and `--config.KEY=VALUE`, as train.py parses them."""
    path = os.path.join(configs.FOLDER, "coco_panoptic.py")
    argv = ["train.py", f"--config={path}:swin_l", f"--config.data.options.root={roots['coco_panoptic']}",
            "--config.steps=1000", "--config.optimizer.learning_rate=5e-5"]  # fmt: skip
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, sys_argv=argv)
    values(argv)
    c = values.config
    assert (c.model.preset, c.model.num_queries, c.steps, c.optimizer.learning_rate) == (
        "swin-large-coco-panoptic", 200, 1000, 5e-5,
    )  # fmt: skip
    assert problems(c) == []


def test_data_doc_covers_every_source_and_data_field():
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "data.md"), encoding="utf-8") as f:
        doc = f.read()
    from m2f_jax.data.sources import SOURCES

    missing = [f"`{s}`" for s in SOURCES if f"`{s}`" not in doc]
    missing += [f"`{k}`" for k in FIELDS if k.startswith("data.") and f"`{k}`" not in doc]
    assert not missing, f"docs/data.md does not mention {missing}"
