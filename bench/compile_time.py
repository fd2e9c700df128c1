#!/usr/bin/env python
"""Compile time of the forward pass and of forward + backward, unrolled layers against scanned ones.

`scan_layers` runs each stack of identical units (Swin block pairs, deformable encoder layers,
decoder rounds) as one lax.scan, so the compiled program holds one copy of a unit instead of one
per layer. This measures what that buys at the published shapes (random weights, no HF needed):
lowering + XLA compilation, each in a fresh jit, in one process.

    python bench/compile_time.py --preset swin-tiny-coco-panoptic swin-large-coco-panoptic --size 384
"""

from __future__ import annotations

import argparse
import json
import platform
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", nargs="+", default=["swin-tiny-coco-panoptic", "swin-large-coco-panoptic"])
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    from flax import nnx

    import m2f_jax
    from m2f_jax.modeling.layers import LayerExecution

    pixels = jax.ShapeDtypeStruct((args.batch, args.size, args.size, 3), jnp.float32)
    rows = []
    print(f"{platform.processor() or platform.machine()}, jax {jax.__version__}, {jax.devices()[0].platform}")
    print(f"{'preset':28s} {'scan':>5s} {'forward':>9s} {'fwd+bwd':>9s}")
    for name in args.preset:
        config = m2f_jax.preset(name)
        for scan in (False, True):
            model = nnx.eval_shape(
                lambda config=config, scan=scan: m2f_jax.Mask2FormerForUniversalSegmentation(
                    config, rngs=nnx.Rngs(0), execution=LayerExecution(scan=scan)
                )
            )
            graphdef, params, rest = nnx.split(model, nnx.Param, ...)

            def forward(params, rest, pixels, graphdef=graphdef):
                out = nnx.merge(graphdef, params, rest, copy=True)(pixels)
                return out.class_queries_logits, out.masks_queries_logits

            def loss(params, rest, pixels, forward=forward):
                classes, masks = forward(params, rest, pixels)
                return jnp.mean(classes**2) + jnp.mean(masks**2)

            row = {"preset": name, "scan": scan, "size": args.size, "batch": args.batch}
            for key, fn in (("forward_s", forward), ("forward_backward_s", jax.grad(loss))):
                start = time.perf_counter()
                jax.jit(fn).lower(params, rest, pixels).compile()
                row[key] = round(time.perf_counter() - start, 1)
            rows.append(row)
            print(f"{name:28s} {scan!s:>5s} {row['forward_s']:8.1f}s {row['forward_backward_s']:8.1f}s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
