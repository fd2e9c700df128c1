"""The ResNet backbone (Mask2Former's R50 / R101 baselines): the whole model against HF's with a
ResNet backbone, ImageNet state dicts against timm's ResNet, padded batches against images alone,
the config against transformers' ResNetConfig, and the frozen BatchNorm weights through saving,
the optimizer's groups, a training step, a checkpoint and an export."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_hf_parity import compare

import m2f_jax
from m2f_jax.config import Mask2FormerConfig, ResNetConfig, preset
from m2f_jax.conversion import imagenet
from m2f_jax.conversion.hf import CheckpointMismatch
from m2f_jax.conversion.resnet_imagenet import backbone_shapes, resnet_backbone_params
from m2f_jax.modeling.frozen_batchnorm import Frozen
from m2f_jax.modeling.layers import LayerExecution
from m2f_jax.modeling.resnet import ResNetBackbone
from m2f_jax.modeling.valid_region import FeatureMap
from m2f_jax.weights import model_params

from helpers import FAST_COMPILE, max_diff, nhwc, save_random_hf_model, tiny_config, tiny_resnet_config
from torchvision_stub import import_timm

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY_BACKBONE = tiny_resnet_config().backbone_config
# timm's plain 7x7 stem is 64 wide whatever the stage widths.
TIMM_BACKBONE = ResNetConfig(embedding_size=64, hidden_sizes=(32, 64, 128, 256), depths=(1, 2, 1, 1))
CANVAS = (66, 90)  # stem 33x45, stages 17x23, 9x12, 5x6, 3x3


# ------------------------------------------------------------------------------------------ config
def test_config_round_trips_through_transformers():
    """What we write, transformers reads as the same ResNetConfig; what transformers writes, we read."""
    config = tiny_resnet_config()
    hf_config = transformers.Mask2FormerConfig.from_dict(config.to_hf_dict())
    backbone = hf_config.backbone_config
    assert isinstance(backbone, transformers.ResNetConfig)
    assert (backbone.embedding_size, list(backbone.hidden_sizes), list(backbone.depths)) == (
        16,
        [32, 64, 128, 256],
        [1, 2, 1, 1],
    )
    assert list(backbone.out_features) == ["stage1", "stage2", "stage3", "stage4"]
    assert Mask2FormerConfig.from_hf_dict(hf_config.to_dict()) == config

    theirs = transformers.Mask2FormerConfig(
        backbone_config=transformers.ResNetConfig(
            depths=[3, 4, 23, 3], out_features=["stage1", "stage2", "stage3", "stage4"]
        ),
    ).to_dict()
    assert Mask2FormerConfig.from_hf_dict(theirs).backbone_config == ResNetConfig(depths=(3, 4, 23, 3))


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(layer_type="basic"), "layer_type must be 'bottleneck'"),
        (dict(hidden_act="gelu"), "hidden_act must be 'relu'"),
        (dict(downsample_in_first_stage=True), "downsample_in_first_stage=True is not supported"),
        (dict(downsample_in_bottleneck=True), "downsample_in_bottleneck=True"),
        (dict(out_features=["stage4"]), "all four ResNet stages"),
        (dict(depths=[3, 4, 6]), "four ResNet stages"),
        (dict(depths=[3, 0, 6, 3]), "at least one block"),
        (dict(hidden_sizes=[256, 510, 1024, 2048]), "multiples of 4"),
    ],
)
def test_unsupported_resnet_settings_are_refused(changes, message):
    data = preset("resnet-50-coco-panoptic").to_hf_dict()
    data["backbone_config"].update(changes)
    with pytest.raises(ValueError, match=message):
        Mask2FormerConfig.from_hf_dict(data)


def test_presets():
    r50, r101 = preset("resnet-50-coco-panoptic"), preset("resnet-101-ade-semantic")
    assert r50.backbone_config == ResNetConfig() and r50.num_queries == 100 and r50.num_labels == 133
    assert r101.backbone_config.depths == (3, 4, 23, 3) and r101.num_labels == 150
    assert "resnet-101-cityscapes-instance" in m2f_jax.preset_names()
    with pytest.raises(ValueError, match="unknown preset"):
        preset("resnet-18-coco-panoptic")


# ------------------------------------------------------------------------------ HF transformers
def test_hf_parity_batch2_odd_size(tmp_path):
    """Random weights and BatchNorm statistics, 70x90 (stem 35x45, stages 18x23, 9x12, 5x6, 3x3): every
    backbone stage, pixel-decoder output and prediction equals HF's."""
    compare(tiny_resnet_config(encoder_layers=1, decoder_layers=2), 2, 70, 90, tmp_path, 1e-4, seed=7)


def test_frozen_weights_are_saved_and_loaded(tmp_path):
    """A converted HF folder's BatchNorm statistics are weights of ours: written by save_pretrained and
    read back by from_pretrained (and in no optimizer group: they are not parameters)."""
    hf_model = save_random_hf_model(tiny_resnet_config(), tmp_path / "hf", seed=8)
    model, ignored = m2f_jax.weights.convert_hf(str(tmp_path / "hf"), tmp_path / "ours")
    assert sum(key.endswith("num_batches_tracked") for key in ignored) == len(ignored) - 1  # + criterion
    stem = "model.pixel_level_module.encoder.embedder.embedder.normalization."
    reference = hf_model.state_dict()
    for ours, theirs in (
        ("scale", "weight"),
        ("bias", "bias"),
        ("running_mean", "running_mean"),
        ("running_var", "running_var"),
    ):
        assert np.array_equal(model_params(model)[stem + ours], reference[stem + theirs].numpy())
    reloaded = m2f_jax.from_pretrained(str(tmp_path / "ours"))
    saved, loaded = model_params(model), model_params(reloaded)
    assert sorted(saved) == sorted(loaded) and all(np.array_equal(saved[k], loaded[k]) for k in saved)
    convs = [name for name in loaded if name.endswith("convolution.kernel")]
    assert len(nnx.to_flat_state(nnx.state(reloaded, Frozen))) == 4 * len(convs)  # a frozen BatchNorm per conv


# ----------------------------------------------------------------------------------- padded batch
def backbone_with(config: ResNetConfig, weights, execution: LayerExecution | None = None) -> ResNetBackbone:
    """A backbone holding `weights` (by dotted name), built without running an initialiser."""
    abstract = nnx.eval_shape(lambda: ResNetBackbone(config, execution or LayerExecution(), rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    flat = [(path, v.replace(jnp.asarray(weights[".".join(map(str, path))]))) for path, v in nnx.to_flat_state(state)]
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def random_backbone(config: ResNetConfig, seed: int = 0, execution: LayerExecution | None = None) -> ResNetBackbone:
    """A backbone with random convs (He-scaled) and random, not identity, frozen BatchNorms."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in backbone_shapes(config).items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "kernel":
            value = rng.normal(0, np.sqrt(2 / np.prod(shape[:-1])), shape)
        elif leaf == "running_var":
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = (leaf == "scale") + 0.2 * rng.normal(size=shape)
        weights[name] = value.astype(np.float32)
    return backbone_with(config, weights, execution)


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, pixels):
    return nnx.merge(graphdef, state, copy=True)(pixels)


def jitted(backbone: ResNetBackbone):
    """The backbone's forward under jit (eager ops each compile on their own, which is slower); one
    compilation per backbone shape and input shape, shared by the tests."""
    graphdef, state = nnx.split(backbone)
    return lambda pixels: _forward(graphdef, state, pixels)


def test_padded_batch_equals_each_image_alone():
    """Two images of different odd sizes in one padded canvas: on its valid region every stage equals
    what the image gets alone (pads, strides and the max pool see the image's own edges). The canvas
    has the timm test's shape, so the two share a compilation."""
    backbone = jitted(random_backbone(TIMM_BACKBONE, seed=1))
    sizes = [(45, 61), (66, 37)]
    rng = np.random.default_rng(0)
    canvas = np.full((2, *CANVAS, 3), 5.0, np.float32)  # padding that must not leak in
    alone = []
    for i, (h, w) in enumerate(sizes):
        image = rng.normal(size=(1, h, w, 3)).astype(np.float32)
        canvas[i, :h, :w] = image[0]
        alone.append(backbone(FeatureMap(jnp.asarray(image), jnp.array([[h, w]], jnp.int32))))
    batch = backbone(FeatureMap(jnp.asarray(canvas), jnp.array(sizes, jnp.int32)))
    for stage in range(4):
        for i in range(2):
            single = alone[i][stage]
            h, w = (int(s) for s in single.sizes[0])
            assert single.values.shape[1:3] == (h, w)  # alone, the whole map is valid
            assert tuple(int(s) for s in batch[stage].sizes[i]) == (h, w)
            scale = 1.0 + float(jnp.abs(single.values).max())  # float32 rounding, relative to values up to ~10
            assert max_diff(batch[stage].values[i, :h, :w], single.values[0]) < 1e-5 * scale, (stage, i)


def test_scan_remat_and_bfloat16():
    """Identical blocks scanned and rematerialised give the unrolled values; in bfloat16 (as the model's
    set_dtype sets it) the convs compute in bf16 and the stages follow float32's within bf16 rounding."""
    config = ResNetConfig(embedding_size=16, hidden_sizes=(32, 64, 128, 256), depths=(1, 3, 1, 1))
    pixels = FeatureMap(
        jnp.asarray(np.random.default_rng(2).normal(size=(1, 40, 40, 3)), jnp.float32), jnp.array([[40, 33]], jnp.int32)
    )
    plain = jitted(random_backbone(config, seed=2))(pixels)
    scanned = jitted(random_backbone(config, seed=2, execution=LayerExecution(remat="full", scan=True)))(pixels)
    for a, b in zip(plain, scanned, strict=True):
        assert max_diff(a.values, b.values) < 1e-5
    half = random_backbone(config, seed=2)
    half.set_attributes(dtype=jnp.bfloat16)
    half = jitted(half)(pixels.replace(values=pixels.values.astype(jnp.bfloat16)))
    for a, b in zip(plain, half, strict=True):
        assert b.values.dtype == jnp.bfloat16
        error = np.abs(np.asarray(a.values) - np.asarray(b.values, np.float32)).mean() / np.abs(a.values).mean()
        assert 0 < error < 0.05, error


# --------------------------------------------------------------------------------------- ImageNet
@pytest.fixture(scope="module")
def timm_resnet():
    """timm's ResNet with TIMM_BACKBONE's shape, random weights and BatchNorm statistics, in eval mode."""
    import_timm()
    from timm.models.resnet import Bottleneck, ResNet

    torch.manual_seed(0)
    model = ResNet(
        block=Bottleneck, layers=list(TIMM_BACKBONE.depths), stem_width=16, channels=(8, 16, 32, 64), num_classes=10
    ).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            norm = "bn" in name or "downsample.1" in name
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif norm and name.endswith(("weight", "bias", "running_mean")):
                tensor.copy_(0.2 * torch.randn(tensor.shape, generator=generator) + name.endswith("weight"))
    return model


def state_dict_of(model) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in model.state_dict().items()}


def test_timm_imagenet_weights_give_timm_stages(timm_resnet):
    params, ignored = resnet_backbone_params(state_dict_of(timm_resnet), TIMM_BACKBONE)
    assert sorted(ignored)[:2] == ["bn1.num_batches_tracked", "fc.bias"] and "fc.weight" in ignored
    backbone = backbone_with(TIMM_BACKBONE, params)

    pixels = np.random.default_rng(3).normal(size=(2, 3, *CANVAS)).astype(np.float32)
    with torch.no_grad():
        reference = timm_resnet.forward_intermediates(
            torch.from_numpy(pixels), indices=[1, 2, 3, 4], intermediates_only=True
        )
    ours = jitted(backbone)(FeatureMap(jnp.asarray(nhwc(pixels)), jnp.array([CANVAS] * 2, jnp.int32)))
    for stage, theirs in zip(ours, reference, strict=True):
        assert stage.values.shape == nhwc(theirs).shape
        assert max_diff(stage.values, nhwc(theirs)) < 1e-4


def test_bad_imagenet_state_dicts_are_listed(timm_resnet):
    state = state_dict_of(timm_resnet)
    broken = dict(state)
    del broken["layer2.0.downsample.0.weight"]
    broken["layer5.0.conv1.weight"] = state["layer1.0.conv1.weight"]
    broken["layer1.0.bn2.running_var"] = np.ones(7, np.float32)
    with pytest.raises(CheckpointMismatch) as error:
        resnet_backbone_params(broken, TIMM_BACKBONE)
    message = str(error.value)
    for line in (
        "1 missing:",
        "layer2.0.downsample.0.weight",
        "1 unexpected:",
        "layer5.0.conv1.weight",
        "1 mis-shaped:",
        "layer1.0.bn2.running_var: state dict (7,)",
    ):
        assert line in message
    with pytest.raises(CheckpointMismatch, match="missing"):  # an R50 state dict is not this backbone
        resnet_backbone_params(state, ResNetConfig(embedding_size=16, hidden_sizes=(32, 64, 128, 256)))
    state["layer3.0.conv2.weight"] = np.full_like(state["layer3.0.conv2.weight"], np.nan)
    with pytest.raises(ValueError, match="layer3.0.conv2.weight"):
        resnet_backbone_params(state, TIMM_BACKBONE)


def our_stages(params):
    """Our TIMM_BACKBONE-shaped backbone's four stages (NCHW) on a fixed random batch, and the batch."""
    pixels = np.random.default_rng(3).normal(size=(2, 3, *CANVAS)).astype(np.float32)
    stages = jitted(backbone_with(TIMM_BACKBONE, params))(
        FeatureMap(jnp.asarray(nhwc(pixels)), jnp.array([CANVAS] * 2, jnp.int32))
    )
    return [np.asarray(s.values).transpose(0, 3, 1, 2) for s in stages], pixels


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_imagenet_files_through_load_backbone_weights(timm_resnet, tmp_path, suffix):
    """timm's .safetensors and torchvision's .pth (the same keys) give resnet_backbone_params' weights
    (tested above against timm's stages); the report says what was loaded and ignored, none kept."""
    state = state_dict_of(timm_resnet)
    path = tmp_path / f"resnet{suffix}"
    if suffix == ".pth":
        torch.save(timm_resnet.state_dict(), path)
    else:
        from safetensors.numpy import save_file

        save_file(state, str(path))
    params, report = imagenet.load_backbone_weights(path, TIMM_BACKBONE)
    expected, _ = resnet_backbone_params(state, TIMM_BACKBONE)
    assert sorted(params) == sorted(expected) == sorted(backbone_shapes(TIMM_BACKBONE))
    assert all(np.array_equal(params[k], expected[k]) for k in expected)
    assert (report.format, report.kept, report.loaded) == (imagenet.TORCHVISION_RESNET, (), tuple(sorted(params)))
    reasons = dict(report.ignored)
    assert reasons.pop("fc.weight") == reasons.pop("fc.bias") == "classifier head"
    assert set(reasons.values()) == {"buffer"} and all(k.endswith("num_batches_tracked") for k in reasons)
    lines = report.summary().splitlines()
    assert lines[0] == f"backbone weights from {path} (torchvision/timm ResNet): {len(expected)} parameters loaded"
    buffers, head = sorted(lines[1:])  # in the file's key order
    assert buffers.startswith("  ignored, buffer: ") and buffers.endswith(f", ... ({len(reasons)} in all)")
    assert head in ("  ignored, classifier head: fc.weight, fc.bias", "  ignored, classifier head: fc.bias, fc.weight")


@pytest.fixture(scope="module")
def hf_resnet(tmp_path_factory):
    """transformers' ResNetForImageClassification with TIMM_BACKBONE's shape, random weights and BatchNorm
    statistics, saved with save_pretrained; (folder, model in eval mode)."""
    torch.manual_seed(1)
    config = transformers.ResNetConfig(
        embedding_size=64, hidden_sizes=list(TIMM_BACKBONE.hidden_sizes), depths=list(TIMM_BACKBONE.depths),
        layer_type="bottleneck", num_labels=10,
    )  # fmt: skip
    model = transformers.ResNetForImageClassification(config).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif ".normalization." in name and name.endswith(("weight", "bias", "running_mean")):
                tensor.copy_(0.2 * torch.randn(tensor.shape, generator=generator) + name.endswith("weight"))
    folder = tmp_path_factory.mktemp("hf_resnet")
    model.save_pretrained(str(folder))
    return folder, model


def test_hf_resnet_checkpoint_gives_hf_stages(hf_resnet):
    folder, model = hf_resnet
    params, report = imagenet.load_backbone_weights(folder, TIMM_BACKBONE)
    assert report.format == imagenet.HF_RESNET and report.kept == ()
    assert sorted(params) == sorted(backbone_shapes(TIMM_BACKBONE))
    assert dict(report.ignored)["classifier.1.weight"] == "classifier head"
    ours, pixels = our_stages(params)
    with torch.no_grad():
        theirs = model.resnet(torch.from_numpy(pixels), output_hidden_states=True).hidden_states[1:]
    for stage, reference in zip(ours, theirs, strict=True):
        assert stage.shape == reference.shape and max_diff(stage, reference.numpy()) < 1e-4


def test_bad_resnet_checkpoints_are_refused(hf_resnet, timm_resnet, tmp_path):
    import json
    import shutil

    folder, _ = hf_resnet
    other = tmp_path / "stride_in_1x1"
    shutil.copytree(folder, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "downsample_in_bottleneck": True}))
    with pytest.raises(imagenet.BackboneMismatch, match=r"downsample_in_bottleneck: checkpoint True vs model False"):
        imagenet.load_backbone_weights(other, TIMM_BACKBONE)
    (other / "config.json").write_text(json.dumps({**config, "model_type": "swin"}))
    with pytest.raises(ValueError, match=r"model_type 'swin'; expected a ResNet \('resnet'\)"):
        imagenet.load_backbone_weights(other, TIMM_BACKBONE)
    wider = ResNetConfig(embedding_size=64, hidden_sizes=(32, 64, 128, 512), depths=TIMM_BACKBONE.depths)
    with pytest.raises(imagenet.BackboneMismatch, match=r"hidden_sizes: checkpoint \(32, 64, 128, 256\) vs model"):
        imagenet.load_backbone_weights(folder, wider)
    pth = tmp_path / "r.pth"
    torch.save({k: v for k, v in timm_resnet.state_dict().items() if k != "layer4.0.bn3.running_var"}, pth)
    missing = r"(?s)r.pth \(torchvision/timm ResNet\):.*1 missing:\s+layer4.0.bn3.running_var"
    with pytest.raises(CheckpointMismatch, match=missing):
        imagenet.load_backbone_weights(pth, TIMM_BACKBONE)
    torch.save({"patch_embed.proj.weight": torch.zeros(4, 3, 4, 4)}, pth)
    with pytest.raises(ValueError, match=r"r.pth is not a ResNet classification checkpoint .*first keys: patch_embed"):
        imagenet.load_backbone_weights(pth, TIMM_BACKBONE)


# --------------------------------------------------------------------------------------- training
def test_optimizer_groups():
    """Backbone convs take the backbone multiplier and decay; the frozen BatchNorms are no parameters."""
    from m2f_jax.training.optimizer import describe_groups

    model = nnx.eval_shape(lambda: m2f_jax.Mask2FormerForUniversalSegmentation(tiny_resnet_config(), rngs=nnx.Rngs(0)))
    groups = describe_groups(model)
    encoder = "model.pixel_level_module.encoder."
    backbone_params = {name for name, _ in model_params_shapes(model) if name.startswith(encoder)}
    assert backbone_params and set(groups["backbone"]) == backbone_params
    assert all(name.endswith("convolution.kernel") for name in backbone_params)
    assert not backbone_params & set(groups["no_weight_decay"])


def test_backbone_init_places_trained_and_frozen_weights(timm_resnet, tmp_path):
    """model.backbone_init with a timm ResNet checkpoint: a new run's backbone holds its weights, the
    BatchNorm statistics and affine weights (frozen, in state.rngs) too; the heads keep their init."""
    from m2f_jax.training import experiment
    from m2f_jax.training.backbone_init import BACKBONE
    from m2f_jax.training.mesh import make_mesh

    from tiny_experiment import get_config

    path = tmp_path / "resnet.pth"
    torch.save(timm_resnet.state_dict(), path)
    c = get_config()
    c.model.backbone_init = str(path)
    config = tiny_config(backbone_config=TIMM_BACKBONE, num_labels=7, encoder_layers=1, decoder_layers=1)
    opt_config, _ = experiment.optimizer_config(c)
    lines = []
    graphdef, state = experiment.initial_state(c, config, opt_config, make_mesh(1, devices=jax.devices()[:1]), lines)
    assert lines[0].startswith(f"backbone weights from {path} (torchvision/timm ResNet): ")
    expected, _ = resnet_backbone_params(state_dict_of(timm_resnet), TIMM_BACKBONE)
    prefix = ".".join(BACKBONE) + "."
    weights = model_params(nnx.merge(graphdef, state.params, state.rngs))
    backbone = {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}
    assert sorted(backbone) == sorted(expected)
    assert all(np.array_equal(backbone[k], expected[k]) for k in expected)
    frozen = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(state.rngs) if "normalization" in map(str, p)}
    assert len(frozen) == 4 * sum(k.endswith("convolution.kernel") for k in expected)  # in state.rngs, loaded


def model_params_shapes(model):
    return [(".".join(map(str, path)), v.shape) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))]


def test_train_step_checkpoint_and_export(tmp_path):
    """One training step of a tiny ResNet model (started from a model folder): the parameters
    move, the frozen weights do not; a checkpoint of the state restores and exports them both."""
    from m2f_jax.training import experiment, export
    from m2f_jax.training import workdir as run_record
    from m2f_jax.training.checkpoint import Checkpoints
    from m2f_jax.training.mesh import global_batch, make_mesh
    from m2f_jax.weights import model_from_params, param_shapes

    from tiny_experiment import get_config

    config = tiny_resnet_config(depths=(1, 1, 1, 1), num_labels=7, encoder_layers=1, decoder_layers=1)
    rng = np.random.default_rng(0)  # random weights, not an initialiser's (initialising costs seconds)
    weights = {name: rng.normal(0, 0.1, shape) for name, shape in param_shapes(config).items()}
    weights.update({name: rng.uniform(0.5, 1.5, w.shape) for name, w in weights.items() if name.endswith("_var")})
    start = model_from_params(config, weights)
    start.save_pretrained(tmp_path / "start")
    c = get_config()
    c.model.init_from = str(tmp_path / "start")
    c.batch_size = 2
    mesh = make_mesh(1, devices=jax.devices()[:1])
    batch = next(experiment.train_batches(c, 0, 1))
    batch.pop("skipped")
    config = experiment.model_config(c, experiment.dataset(c, "train"))
    opt_config, _ = experiment.optimizer_config(c)
    graphdef, state = experiment.initial_state(c, config, opt_config, mesh)
    step = experiment.jitted_train_step(c, config, graphdef, opt_config, state, mesh, FAST_COMPILE)
    before = model_params(start)
    state, metrics = step(state, global_batch(batch, mesh))
    assert bool(metrics["finite"]) and int(state.step) == 1

    workdir = str(tmp_path / "run")
    run_record.record_start(workdir, c, config)
    checkpoints = Checkpoints(workdir)
    checkpoints.save(1, state, {"iterator": {}, "skipped": 0})
    checkpoints.wait()
    restored, _ = checkpoints.restore(state)  # a resumed run gets the frozen weights back with the RNG streams
    checkpoints.close()
    for a, b in zip(
        jax.tree.leaves(nnx.state(nnx.merge(graphdef, restored.params, restored.rngs), Frozen)),
        jax.tree.leaves(nnx.state(nnx.merge(graphdef, state.params, state.rngs), Frozen)),
        strict=True,
    ):
        assert np.array_equal(a, b)
    after = model_params(export.run_model(workdir))
    assert sorted(after) == sorted(before)
    frozen = [name for name in before if name.rsplit(".", 1)[-1] in ("running_mean", "running_var")]
    assert frozen and all(np.array_equal(after[name], before[name]) for name in frozen)
    frozen_affine = [n for n in before if ".normalization." in n and n.endswith((".scale", ".bias"))]
    assert frozen_affine and all(np.array_equal(after[n], before[n]) for n in frozen_affine)
    convs = [name for name in before if name.endswith("convolution.kernel")]
    assert all(not np.array_equal(after[name], before[name]) for name in convs)
