#!/usr/bin/env python
"""Forward latency: m2f_jax (jitted) against HF transformers' PyTorch Mask2Former, same weights.

Builds a random-weight HF model of a published shape, saves it with save_pretrained, converts it,
and times both on the same input in one run: median of --runs after --warmup runs, the ratio,
and the JAX compile time. Also prints the largest difference of the logits as a sanity check.

    python bench/forward.py --preset swin-tiny-coco-panoptic --size 384 --batch 1
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time


def timed(fn, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="swin-tiny-coco-panoptic")
    parser.add_argument("--size", type=int, nargs="+", default=[384], help="H [W]")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    height, width = (args.size * 2)[:2]

    import jax
    import numpy as np
    import torch
    import transformers

    import m2f_jax

    config = m2f_jax.preset(args.preset)
    torch.manual_seed(0)
    hf_model = transformers.Mask2FormerForUniversalSegmentation(
        transformers.Mask2FormerConfig.from_dict(config.to_hf_dict())
    ).eval()
    with tempfile.TemporaryDirectory() as folder:
        hf_model.save_pretrained(folder)
        model = m2f_jax.from_pretrained(folder)

    pixels = np.random.RandomState(0).randn(args.batch, 3, height, width).astype(np.float32)
    torch_input = torch.from_numpy(pixels)
    jax_input = jax.device_put(pixels.transpose(0, 2, 3, 1))
    forward = jax.jit(lambda m, x: m(x))

    start = time.perf_counter()
    compiled = forward.lower(model, jax_input).compile()
    compile_s = time.perf_counter() - start

    def run_jax():
        return jax.block_until_ready(compiled(model, jax_input))

    def run_torch():
        with torch.inference_mode():
            return hf_model(torch_input)

    diff = float(np.abs(np.asarray(run_jax().class_queries_logits) - run_torch().class_queries_logits.numpy()).max())
    jax_s = statistics.median(timed(run_jax, args.runs, args.warmup))
    torch_s = statistics.median(timed(run_torch, args.runs, args.warmup))

    device = jax.devices()[0]
    print(f"model {args.preset}, input {args.batch}x{height}x{width}, {args.runs} runs after {args.warmup} warm-up")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; jax on {device.platform}")
    print(
        f"versions: jax {jax.__version__}, flax {__import__('flax').__version__}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )
    print(f"jax compile          {compile_s:8.2f} s")
    print(f"jax (jit) median     {jax_s * 1e3:8.1f} ms")
    print(f"HF PyTorch median    {torch_s * 1e3:8.1f} ms")
    print(f"speed-up (HF / jax)  {torch_s / jax_s:8.2f} x")
    print(f"max |class logits difference| {diff:.2e}")


if __name__ == "__main__":
    main()
