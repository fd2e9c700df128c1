#!/usr/bin/env python
"""The training step, ours against HF's, on the same weights and the same random targets.

Ours: the step train.py runs (m2f_jax.training.experiment: `initial_state` from the converted weights,
`jitted_train_step`: forward in training mode, the matched point-sampled loss on every prediction,
gradients, clipping, AdamW, the finite check; the state donated). HF's:
`model(pixel_values, mask_labels, class_labels).loss.backward()` then `torch.optim.AdamW.step()`.
Both are timed interleaved (ours, HF, ours, ...), medians; our compile time separately.

--breakdown adds our step in parts, each jitted alone (medians, interleaved with each other): the
training-mode forward; forward + backward with a trivial loss (sum of squares of every prediction);
forward + backward with the matched loss; the loss alone (forward, and forward + backward from the
model's outputs); the optimizer update alone. And HF's forward in training mode (no grad) and forward
with its loss (no backward). With XLA's FLOP count of each jitted part.

--memory SIZE compiles (does not run) the step at SIZE x SIZE with and without remat and prints XLA's
memory analysis (what the step needs on the device).

    python bench/train_step.py --preset swin-tiny-coco-panoptic --size 384 --batch 2 --breakdown
    python bench/train_step.py --preset swin-tiny-coco-panoptic --memory 1024 --batch 2 --runs 0
    python bench/train_step.py --preset tiny --size 64 --batch 2 --points 256 --runs 2   # smoke run
"""

from __future__ import annotations

import argparse
import sys
import types
from typing import Any

import common
import numpy as np


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="swin-tiny-coco-panoptic", help='a preset name or "tiny"')
    p.add_argument("--size", type=int, default=384, help="square crop side")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--slots", type=int, default=None, help="target slots per image (default: the queries)")
    p.add_argument("--segments", type=int, nargs=2, default=(8, 20), help="random targets per image: min max")
    p.add_argument("--points", type=int, default=None, help="loss points (default: the config's, 12544)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="our compute dtype")
    p.add_argument("--remat", default="none", help="the remat policy (none, full, dots, dots_saveable)")
    p.add_argument("--no-scan", action="store_true", help="unrolled layers (the recipe scans them)")
    p.add_argument("--matcher", default="hungarian", choices=["hungarian", "scipy"])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--no-hf", action="store_true", help="ours only")
    p.add_argument("--breakdown", action="store_true", help="time our step's parts too")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--torch-compile", action="store_true", help="HF's model under torch.compile too")
    p.add_argument("--torch-compile-backend", default="inductor", help="eager: test the path without compiling")
    p.add_argument("--peak-tflops", type=float, default=None, help="the accelerator's peak, for MFU")
    p.add_argument("--memory", type=int, default=None, help="compile at this size with/without remat: memory")
    common.add_thread_flag(p)
    p.add_argument("--json", default=None, help="write the results here")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------------
# The experiment and the batch


def experiment_config(args, folder: str, num_queries: int):
    """The COCO panoptic recipe (configs/coco_panoptic.py) fine-tuning from `folder`, with this run's
    batch, slots, loss points, dtype and remat."""
    from m2f_jax.configs import coco_panoptic

    c = coco_panoptic.get_config("swin_t")
    c.model.init_from = folder
    c.batch_size = args.batch
    c.data.max_instances = args.slots or num_queries
    c.compute_dtype = args.dtype
    c.remat = args.remat
    c.scan_layers = not args.no_scan
    c.loss.matcher = args.matcher
    if args.points:
        c.loss.num_points = args.points
    return c


def random_batch(seed: int, batch: int, size: int, num_labels: int, slots: int, segments: tuple[int, int]):
    """A host batch as m2f_jax.data.batch makes them: random pixels, and per image a random number of
    segments (Voronoi cells of random centres) with random labels."""
    rng = np.random.RandomState(seed)
    image = rng.randint(0, 256, (batch, size, size, 3)).astype(np.uint8)
    target_map = np.zeros((batch, size, size), np.uint8 if slots <= 254 else np.int16)
    labels = np.full((batch, slots), -1, np.int32)
    yy, xx = np.mgrid[:size, :size]
    for b in range(batch):
        n = min(rng.randint(segments[0], segments[1] + 1), slots)
        centres = rng.rand(n, 2) * size
        distance = (yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2
        target_map[b] = distance.argmin(0) + 1
        labels[b, :n] = rng.randint(0, num_labels, n)
    return {
        "image": image,
        "pixel_mask": np.ones((batch, size, size), bool),
        "target_map": target_map,
        "class_labels": labels,
        "mask_valid": labels >= 0,
    }


def hf_inputs(batch: dict[str, np.ndarray], normalize):
    """The same batch as HF's model takes it: normalised NCHW pixels, per-image mask and label lists."""
    import torch

    pixels = torch.from_numpy(np.ascontiguousarray(normalize(batch["image"]).transpose(0, 3, 1, 2)))
    masks, labels = [], []
    for b in range(len(batch["image"])):
        n = int(batch["mask_valid"][b].sum())
        slots = np.arange(1, n + 1)[:, None, None]
        masks.append(torch.from_numpy((batch["target_map"][b][None] == slots).astype(np.float32)))
        labels.append(torch.from_numpy(batch["class_labels"][b, :n].astype(np.int64)))
    return pixels, masks, labels


# ----------------------------------------------------------------------------------------------------
# Our step in parts (for --breakdown)


def step_parts(c, config, graphdef, state, batch):
    """Jitted functions of (params, ...) for each part of the step, and their arguments."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from m2f_jax.data.batch import model_inputs
    from m2f_jax.losses import mask2former_loss
    from m2f_jax.processing.targets import PaddedTargets
    from m2f_jax.training import experiment
    from m2f_jax.training.optimizer import build_optimizer, parameter_groups
    from m2f_jax.training.step import training_model

    dtype = jnp.dtype(c.compute_dtype)
    normalize = experiment.processor(c).normalize
    losses = experiment.loss_config(c, config)
    opt_config, _ = experiment.optimizer_config(c)
    tx = build_optimizer(opt_config, parameter_groups(nnx.merge(graphdef, state.params, state.rngs)))
    execution = experiment.layer_execution(c)
    key = jax.random.key(0)

    def outputs_of(params, rngs, batch):
        model = training_model(graphdef, params, rngs, dtype, execution)
        pixels, pixel_mask, masks = model_inputs(batch, normalize)
        out = model(pixels, pixel_mask=pixel_mask)
        return out, PaddedTargets(masks=masks, labels=batch["class_labels"], valid=batch["mask_valid"])

    def forward(params, rngs, batch):
        return outputs_of(params, rngs, batch)[0]

    def trivial_loss(params, rngs, batch):
        out, _ = outputs_of(params, rngs, batch)
        preds = [out.class_queries_logits, out.masks_queries_logits]
        preds += [x for a in out.auxiliary_logits for x in (a["class_queries_logits"], a["masks_queries_logits"])]
        return sum(jnp.mean(jnp.square(p.astype(jnp.float32))) for p in preds)

    def matched_loss(params, rngs, batch):
        out, targets = outputs_of(params, rngs, batch)
        return mask2former_loss(out, targets, key, losses)[0]

    def loss_only(outputs, batch):
        pixels_mask_masks = model_inputs(batch, normalize)
        targets = PaddedTargets(masks=pixels_mask_masks[2], labels=batch["class_labels"], valid=batch["mask_valid"])
        return mask2former_loss(outputs, targets, key, losses)[0]

    def update(grads, opt_state, params):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax_apply(params, updates), opt_state

    def optax_apply(params, updates):
        import optax

        return optax.apply_updates(params, updates)

    state = jax.tree.map(jnp.copy, state)  # the step donates its state: the parts get their own copy
    params, rngs = state.params, state.rngs
    compiled_forward, seconds = common.timed_once(lambda: jax.jit(forward).lower(params, rngs, batch).compile())
    outputs = compiled_forward(params, rngs, batch)  # the loss-alone parts start from real outputs
    grads = jax.tree.map(lambda p: 1e-3 * p, params)  # any values: the update's time does not depend on them
    parts = {
        "forward (training mode)": (compiled_forward, (params, rngs, batch), seconds),
        "forward + backward, trivial loss": (jax.jit(jax.value_and_grad(trivial_loss)), (params, rngs, batch)),
        "forward + backward, matched loss": (jax.jit(jax.value_and_grad(matched_loss)), (params, rngs, batch)),
        "matched loss alone, forward": (jax.jit(loss_only), (outputs, batch)),
        "matched loss alone, forward + backward": (jax.jit(jax.value_and_grad(loss_only)), (outputs, batch)),
        "optimizer update (clip + AdamW)": (jax.jit(update), (grads, state.opt_state, params)),
    }
    return parts


def run_parts(parts, runs: int, warmup: int) -> list[dict[str, Any]]:
    import jax

    compiled, rows = {}, []
    for name, (fn, args, *done) in parts.items():
        if done:  # compiled already
            exe, seconds = fn, done[0]
        else:
            exe, seconds = common.timed_once(lambda fn=fn, args=args: fn.lower(*args).compile())
        print(f"compiled {name}: {seconds:.1f} s", flush=True)
        compiled[name] = (exe, args, seconds)
    fns = {
        name: (lambda exe=exe, args=args: jax.block_until_ready(exe(*args)))
        for name, (exe, args, _) in compiled.items()
    }
    times = common.interleaved(fns, runs, warmup)
    for name, (exe, _, seconds) in compiled.items():
        flops = common.compiled_flops(exe)
        memory = common.memory_summary(exe) or {}
        t = common.median(times[name])
        rows.append(
            {"part": name, "ms": t * 1e3, "gflops": flops / 1e9 if flops else None,
             "gflop_per_s": flops / t / 1e9 if flops else None, "compile_s": seconds,
             "temp_mib": memory.get("temp_mib")}
        )  # fmt: skip
    return rows


# ----------------------------------------------------------------------------------------------------


def memory_at(args, config, folder: str) -> list[dict[str, Any]]:
    """XLA's memory analysis of the step compiled at --memory with and without remat (nothing is run)."""
    import jax

    from m2f_jax.training import experiment
    from m2f_jax.training.mesh import batch_sharding, make_mesh

    rows = []
    mesh = make_mesh(1, devices=jax.devices()[:1])
    source = types.SimpleNamespace(classes=[{"name": n} for _, n in sorted(config.id2label.items())])
    for remat in ("none", "full"):
        a = argparse.Namespace(**{**vars(args), "remat": remat})
        c = experiment_config(a, folder, config.num_queries)
        model_config = experiment.model_config(c, source)
        opt_config, _ = experiment.optimizer_config(c)
        graphdef, abstract = experiment.abstract_state(c, model_config, opt_config, mesh)
        step = experiment.jitted_train_step(c, model_config, graphdef, opt_config, abstract, mesh)
        host = random_batch(0, args.batch, 8, config.num_labels, c.data.max_instances, (1, 1))
        sharding = batch_sharding(mesh)
        size = args.memory
        batch = {
            k: jax.ShapeDtypeStruct((args.batch, size, size, *v.shape[3:]) if v.ndim >= 3 else v.shape, v.dtype,
                                    sharding=sharding)
            for k, v in host.items()
        }  # fmt: skip
        compiled, seconds = common.timed_once(lambda s=step, a=abstract, b=batch: s.lower(a, b).compile())
        memory = common.memory_summary(compiled)
        flops = common.compiled_flops(compiled)
        rows.append({"size": size, "batch": args.batch, "dtype": args.dtype, "remat": remat, "compile_s": seconds,
                     "gflops": flops / 1e9 if flops else None, **(memory or {})})  # fmt: skip
        print(common.table(rows[-1:], [(k, k) for k in rows[-1]]), flush=True)
    return rows


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    common.check_json_path(args.json)
    common.set_threads(args.threads)
    import jax
    import jax.numpy as jnp

    from m2f_jax.training import experiment
    from m2f_jax.training.mesh import global_batch, make_mesh

    info = common.environment()
    common.print_environment(info)
    config = common.model_config(args.preset)
    hf_model, _, folder = common.same_weights(config)
    record: dict[str, Any] = {"args": vars(args), "environment": info, "load_before": common.load_average()}
    if args.memory:
        record["memory"] = memory_at(args, config, folder)
    if args.runs <= 0:
        record["load_after"] = common.load_average()
        common.write_json(args.json, record)
        return record

    # Ours, as train.py builds it.
    c = experiment_config(args, folder, config.num_queries)
    source = types.SimpleNamespace(classes=[{"name": n} for _, n in sorted(config.id2label.items())])
    model_config = experiment.model_config(c, source)
    opt_config, _ = experiment.optimizer_config(c)
    mesh = make_mesh(1, devices=jax.devices()[:1])
    graphdef, state = experiment.initial_state(c, model_config, opt_config, mesh)
    step = experiment.jitted_train_step(c, model_config, graphdef, opt_config, state, mesh)
    host = random_batch(0, args.batch, args.size, config.num_labels, c.data.max_instances, tuple(args.segments))
    batch = global_batch(host, mesh)

    if args.breakdown:  # before the step donates the state
        parts = step_parts(c, model_config, graphdef, state, batch)
    compiled, compile_s = common.timed_once(lambda: step.lower(state, batch).compile())
    print(f"compiled the step: {compile_s:.1f} s, XLA memory {common.memory_summary(compiled)}", flush=True)
    holder = {"state": state}

    def ours():
        holder["state"], metrics = compiled(holder["state"], batch)
        return jax.block_until_ready(metrics)

    fns = {"ours": ours}
    if not args.no_hf:
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        hf_model.train().to(device)
        pixels, masks, labels = hf_inputs(host, experiment.processor(c).normalize)
        pixels, masks, labels = pixels.to(device), [m.to(device) for m in masks], [x.to(device) for x in labels]
        hf_model.config.train_num_points = c.loss.num_points
        hf_model.criterion.num_points = c.loss.num_points
        # bfloat16 as ours: float32 parameters and optimizer, computation in bfloat16 (autocast)
        autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
        o = opt_config
        hf_opt = torch.optim.AdamW(hf_model.parameters(), lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps,
                                   weight_decay=o.weight_decay)  # fmt: skip

        def hf_step(net):
            def run():
                hf_opt.zero_grad(set_to_none=True)
                with autocast:
                    loss = net(pixel_values=pixels, mask_labels=masks, class_labels=labels).loss
                loss.backward()
                hf_opt.step()
                sync()
                return loss.item()

            return run

        fns["hf"] = hf_step(hf_model)
        if args.torch_compile:
            compiled_hf = torch.compile(hf_model, backend=args.torch_compile_backend)
            fns["hf_compile"] = hf_step(compiled_hf)
            _, torch_compile_s = common.timed_once(fns["hf_compile"])
    loss0 = float(ours()["loss"])
    times = common.interleaved(fns, args.runs, args.warmup)
    load = common.load_average()
    ours_s = common.median(times["ours"])
    flops = common.compiled_flops(compiled)
    result = {"preset": args.preset, "size": args.size, "batch": args.batch, "dtype": args.dtype,
              "slots": c.data.max_instances, "points": c.loss.num_points, "remat": args.remat,
              "compile_s": compile_s, "ours_s": ours_s, "ours_all": times["ours"], "first_loss": loss0,
              "gflops": flops / 1e9 if flops else None, "load": load}  # fmt: skip
    if "hf" in times:
        result.update(hf_s=common.median(times["hf"]), hf_all=times["hf"])
        result["speedup"] = result["hf_s"] / ours_s
    if "hf_compile" in times:
        result.update(hf_compile_s=common.median(times["hf_compile"]), torch_compile_s=torch_compile_s)
    result["ours_img_s"] = args.batch / ours_s
    if flops and args.peak_tflops:
        result["mfu"] = flops / ours_s / (args.peak_tflops * 1e12)
    record["step"] = result
    cols = [("preset", "model"), ("size", "size"), ("batch", "batch"), ("dtype", "dtype"), ("compile_s", "compile s"),
            ("ours_s", "ours s"), ("hf_s", "HF s"), ("speedup", "HF / ours"), ("hf_compile_s", "HF torch.compile s"),
            ("ours_img_s", "ours img/s"), ("gflops", "GFLOP (XLA)"), ("mfu", "MFU"), ("load", "load avg")]  # fmt: skip
    print(common.table([result], cols), flush=True)

    if args.breakdown:
        rows = run_parts(parts, args.runs, args.warmup)
        if not args.no_hf:
            hf_parts = hf_breakdown(hf_model, pixels, masks, labels, args.runs, args.warmup)
            rows += hf_parts
        record["breakdown"] = rows
        record["breakdown_load"] = common.load_average()
        print(common.table(rows, [("part", "part"), ("ms", "ms (median)"), ("gflops", "GFLOP"),
                                  ("gflop_per_s", "GFLOP/s"), ("compile_s", "compile s"),
                                  ("temp_mib", "XLA temp MiB")]))  # fmt: skip
        print(f"load average {record['breakdown_load']}")
    record["load_after"] = common.load_average()
    common.write_json(args.json, record)
    jnp.zeros(())  # keep jax imported for the type checker
    return record


def hf_breakdown(hf_model, pixels, masks, labels, runs, warmup) -> list[dict[str, Any]]:
    """HF's forward in training mode, without and with its loss (no backward, no grad)."""
    import torch

    def forward():
        with torch.no_grad():
            return hf_model(pixel_values=pixels)

    def forward_loss():
        with torch.no_grad():
            return hf_model(pixel_values=pixels, mask_labels=masks, class_labels=labels).loss

    fns = {"HF forward (training mode, no grad)": forward, "HF forward + loss (no grad)": forward_loss}
    times = common.interleaved(fns, runs, warmup)
    return [{"part": name, "ms": common.median(t) * 1e3} for name, t in times.items()]


if __name__ == "__main__":
    main(sys.argv[1:])
