#!/usr/bin/env python
"""Inference: m2f_jax (jitted) against HF transformers' PyTorch Mask2Former, same weights, same input.

For each preset x size x batch x dtype: our compile time, then ours and HF's forward timed
interleaved (ours, HF, ours, ...; medians), with and without post-processing, images/s, the ratio,
and the largest difference of the class logits as a sanity check. With --torch-compile also HF under
`torch.compile` (compile time separately). With --peak-tflops the model FLOPs utilisation:
XLA's FLOP count of the compiled forward / time / peak.

Forward: pixels (B, S, S, 3) normalised, no padding mask, every output computed (the auxiliary
predictions included, as HF's). Post-processing: ours = the jitted forward + m2f_jax's host
post-processing (what `Predictor` runs, without its resizing); HF = forward + its image processor's
`post_process_*_segmentation`; both to the input size, the preset's task; threshold 0 for panoptic and
instance (random weights never reach the default 0.8: every query then takes part). bfloat16, ours:
the model's compute dtype (`set_dtype`: parameters stay float32); HF: `model.to(torch.bfloat16)`.

    python bench/inference.py --preset swin-tiny-coco-panoptic --sizes 384 512 --batches 1 4
    python bench/inference.py --preset swin-large-coco-panoptic --sizes 384 --runs 3 --dtypes float32 bfloat16
    python bench/inference.py --quick        # the tiny model at 64, one run (smoke test)
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import common
import numpy as np


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", nargs="+", default=["swin-tiny-coco-panoptic"], help='preset names or "tiny"')
    p.add_argument("--sizes", type=int, nargs="+", default=[384], help="square input sides")
    p.add_argument("--batches", type=int, nargs="+", default=[1])
    p.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    p.add_argument("--post", choices=["with", "without", "both"], default="both", help="post-processing")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--no-hf", action="store_true")
    p.add_argument("--torch-compile", action="store_true", help="HF under torch.compile too")
    p.add_argument("--torch-compile-backend", default="inductor", help="eager: test the path without compiling")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the accelerator's peak, for MFU")
    p.add_argument("--quick", action="store_true", help="the tiny model at 64, one run (smoke test)")
    common.add_thread_flag(p)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.preset, args.sizes, args.batches, args.runs, args.warmup = ["tiny"], [64], [1], 1, 0
    return args


def task_of(preset: str) -> str:
    for task in ("panoptic", "instance", "semantic"):
        if task in preset:
            return task
    return "panoptic"


def post_kwargs(task: str) -> dict[str, Any]:
    return {} if task == "semantic" else {"threshold": 0.0}


def run_case(args, preset, hf_model, model, size, batch, dtype) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import torch
    import transformers

    from m2f_jax.processing import postprocess

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    task = task_of(preset)
    ours_model = common.in_dtype(model, dtype)
    pixels = np.random.RandomState(size + batch).randn(batch, 3, size, size).astype(np.float32)
    jax_pixels = jax.device_put(jnp.asarray(pixels.transpose(0, 2, 3, 1), dtype))

    @jax.jit
    def forward(m, x):
        out = m(x)
        return out.class_queries_logits, out.masks_queries_logits, [tuple(a.values()) for a in out.auxiliary_logits]

    compiled, compile_s = common.timed_once(lambda: forward.lower(ours_model, jax_pixels).compile())
    flops = common.compiled_flops(compiled)
    targets = [(size, size)] * batch
    post_ours = getattr(postprocess, f"post_process_{task}_segmentation")

    class Final:  # the two arrays post-processing reads, on the host
        def __init__(self, c, m):
            self.class_queries_logits, self.masks_queries_logits = c, m

    def ours():
        return jax.block_until_ready(compiled(ours_model, jax_pixels))

    def ours_post():
        c, m, _ = compiled(ours_model, jax_pixels)
        return post_ours(Final(np.asarray(c), np.asarray(m)), target_sizes=targets, **post_kwargs(task))

    fns: dict[str, Any] = {}
    if args.post in ("without", "both"):
        fns["ours"] = ours
    if args.post in ("with", "both"):
        fns["ours + post"] = ours_post
    row: dict[str, Any] = {"preset": preset, "size": size, "batch": batch, "dtype": dtype, "compile_s": compile_s,
                           "gflops": flops / 1e9 if flops else None}  # fmt: skip
    if not args.no_hf:
        hf = hf_model.to(device=device, dtype=torch.bfloat16 if dtype == "bfloat16" else torch.float32)
        torch_pixels = torch.from_numpy(pixels).to(device=device, dtype=hf.dtype)
        processor = transformers.Mask2FormerImageProcessor()
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        post_hf = getattr(processor, f"post_process_{task}_segmentation")

        def hf_forward(net):
            def run():
                with torch.inference_mode():
                    out = net(torch_pixels)
                sync()
                return out

            return run

        def hf_post(net):
            def run():
                with torch.inference_mode():
                    out = net(torch_pixels)
                    result = post_hf(out, target_sizes=targets, **post_kwargs(task))
                sync()
                return result

            return run

        nets = {"HF": hf}
        if args.torch_compile:
            compiled_hf = torch.compile(hf, backend=args.torch_compile_backend)
            _, row["torch_compile_s"] = common.timed_once(hf_forward(compiled_hf))
            nets["HF compile"] = compiled_hf
        for name, net in nets.items():
            if "ours" in fns:
                fns[name] = hf_forward(net)
            if "ours + post" in fns:
                fns[name + " + post"] = hf_post(net)
        ours_logits = np.asarray(ours()[0], np.float32)
        hf_logits = hf_forward(hf)().class_queries_logits.float().cpu().numpy()
        row["max_logit_diff"] = float(np.abs(ours_logits - hf_logits).max())
    times = common.interleaved(fns, args.runs, args.warmup)
    row["load"] = common.load_average()
    for name, t in times.items():
        row[name + " ms"] = common.median(t) * 1e3
        row[name + " img/s"] = batch / common.median(t)
    for ours_name, hf_name in (("ours", "HF"), ("ours + post", "HF + post")):
        if ours_name in times and hf_name in times:
            row[f"speedup{'' if ours_name == 'ours' else ' + post'}"] = row[hf_name + " ms"] / row[ours_name + " ms"]
    if "ours" in times and flops:
        row["gflop_per_s"] = flops / common.median(times["ours"]) / 1e9
        if args.peak_tflops:
            row["mfu"] = row["gflop_per_s"] / (args.peak_tflops * 1e3)
    return row


COLUMNS = [
    ("preset", "model"), ("size", "size"), ("batch", "batch"), ("dtype", "dtype"), ("compile_s", "compile s"),
    ("ours ms", "ours ms"), ("HF ms", "HF ms"), ("speedup", "HF / ours"), ("ours + post ms", "ours + post ms"),
    ("HF + post ms", "HF + post ms"), ("speedup + post", "HF / ours (+post)"), ("ours img/s", "ours img/s"),
    ("HF compile ms", "HF torch.compile ms"), ("gflops", "GFLOP (XLA)"), ("gflop_per_s", "GFLOP/s"), ("mfu", "MFU"),
    ("max_logit_diff", "max |logit diff|"), ("load", "load avg"),
]  # fmt: skip


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    common.check_json_path(args.json)
    common.set_threads(args.threads)
    info = common.environment()
    common.print_environment(info)
    record: dict[str, Any] = {"args": vars(args), "environment": info, "rows": []}
    for preset in args.preset:
        config = common.model_config(preset)
        hf_model, model, _ = common.same_weights(config)
        for dtype in args.dtypes:
            for size in args.sizes:
                for batch in args.batches:
                    row = run_case(args, preset, hf_model, model, size, batch, dtype)
                    record["rows"].append(row)
                    print(common.table([row], [c for c in COLUMNS if c[0] in row]), flush=True)
    present = [c for c in COLUMNS if any(c[0] in r for r in record["rows"])]
    print(common.table(record["rows"], present))
    common.write_json(args.json, record)
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
