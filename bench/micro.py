#!/usr/bin/env python
"""Micro-benchmarks behind three implementation choices: deformable sampling, point sampling, the matcher.

- deform: multi-scale deformable sampling at the pixel decoder's shapes of a Swin-T input (levels at
  strides 32, 16, 8; every token a query; 8 heads of 32 channels, 4 points), forward and
  forward + backward (training differentiates through it), for each variant in `DEFORM_VARIANTS`.
- points: point sampling as the loss does it: every target slot's matched mask (B*M maps at stride 4)
  read at its own points (the 3 x 12544 uncertainty candidates without gradient, the 12544 loss points
  with gradient), and the matcher's shared points (Q query maps, M target maps, 12544 points).
- matcher: the assignment of Q queries to M target slots (some valid) for 10 predictions x batch 2:
  the in-graph solver on the valid targets (`matcher.assign`, used), optax's Hungarian algorithm on
  every slot (the previous one), and scipy's linear_sum_assignment through a host callback.

Each variant is jitted; medians of --runs after --warmup, the variants of one table interleaved.

    python bench/micro.py --only deform points matcher --size 384 --batch 2
    python bench/micro.py --quick   # tiny shapes (smoke run)
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import common
import numpy as np

# ----------------------------------------------------------------------------------------------------
# Deformable sampling variants: (value (B,S,H,D), shapes, locations (B,Q,H,L,P,2), weights (B,Q,H,L,P))


def _variants():
    import jax.numpy as jnp

    from m2f_jax.modeling import deform_attn

    variants = {
        "flat gather (deformable_sampling)": deform_attn.deformable_sampling,
        "per-corner gathers (reference)": deform_attn.deformable_sampling_reference,
    }
    for name in ("deformable_sampling_packed", "deformable_sampling_tokens_major"):
        if hasattr(deform_attn, name):
            variants[name] = getattr(deform_attn, name)
    variants["flat, token-major rows (no transpose)"] = lambda *a: _flat_token_major(jnp, deform_attn, *a)
    variants["flat, token-major, multiply + sum"] = lambda *a: _flat_token_major(jnp, deform_attn, *a, reduce=True)
    variants["2x2 packed rows, one gather"] = lambda *a: _packed(jnp, deform_attn, *a)
    core = _weighted_gather_vjp(recompute=True)
    variants["token-major, custom VJP (gather recomputed)"] = lambda *a: _flat_token_major(
        jnp, deform_attn, *a, core=core
    )
    core_saved = _weighted_gather_vjp(recompute=False)
    variants["token-major, custom VJP (gather saved)"] = lambda *a: _flat_token_major(
        jnp, deform_attn, *a, core=core_saved
    )
    return variants


def _weighted_gather_vjp(recompute: bool):
    """out[n] = sum_k weight[n, k] rows[index[n, k]] with a hand-written backward: the value gradient a
    scatter-add of weight x out-gradient built in the gathered layout (no transposed copy), the weight
    gradient from the gathered rows (gathered again, or kept from the forward: memory)."""
    import jax
    import jax.numpy as jnp

    def gather(rows, index):
        return rows.at[index].get(mode="promise_in_bounds")

    @jax.custom_vjp
    def core(rows, index, weight):
        return jnp.einsum("nkd,nk->nd", gather(rows, index), weight)

    def fwd(rows, index, weight):
        gathered = gather(rows, index)
        kept = rows if recompute else gathered
        return jnp.einsum("nkd,nk->nd", gathered, weight), (kept, index, weight, rows.shape[0])

    def bwd(res, dout):
        kept, index, weight, num_rows = res
        gathered = gather(kept, index) if recompute else kept
        dweight = jnp.sum(gathered * dout[:, None, :], axis=-1)
        updates = (weight[..., None] * dout[:, None, :]).reshape(-1, dout.shape[-1])
        drows = jnp.zeros((num_rows, dout.shape[-1]), dout.dtype)
        drows = drows.at[index.reshape(-1)].add(updates, mode="promise_in_bounds")
        return drows, None, dweight

    core.defvjp(fwd, bwd)
    return core


def _flat_token_major(
    jnp, deform_attn, value, spatial_shapes, locations, weights, valid_shapes=None, reduce=False, core=None
):
    """The flat gather with rows in value's own order (batch, token, head): no transpose of the values."""
    b, s, n_heads, hd = value.shape
    q = locations.shape[1]
    rows = value.reshape(b * s * n_heads, hd)
    indices, ws, start = [], [], 0
    for level, (h, w) in enumerate(spatial_shapes):
        x0, y0, corner_w = deform_attn._bilinear_corners(locations[:, :, :, level], h, w)
        ys = jnp.clip(y0[..., None] + deform_attn._CORNER_DY, 0, h - 1)
        xs = jnp.clip(x0[..., None] + deform_attn._CORNER_DX, 0, w - 1)
        indices.append(start + ys * w + xs)
        ws.append(corner_w * weights[:, :, :, level, :, None])
        start += h * w
    token = jnp.stack(indices, axis=3)  # (B, Q, H, L, P, 4)
    index = (jnp.arange(b)[:, None, None, None, None, None] * s + token) * n_heads
    index = index + jnp.arange(n_heads)[None, None, :, None, None, None]
    weight = jnp.stack(ws, axis=3).reshape(b, q, n_heads, -1)
    if core is not None:
        k = weight.shape[-1]
        return core(rows, index.reshape(-1, k), weight.reshape(-1, k)).reshape(b, q, n_heads * hd)
    gathered = rows.at[index.reshape(-1)].get(mode="promise_in_bounds").reshape(b, q, n_heads, -1, hd)
    if reduce:
        return jnp.sum(gathered * weight[..., None], axis=3).reshape(b, q, n_heads * hd)
    return jnp.einsum("bqhkd,bqhk->bqhd", gathered, weight).reshape(b, q, n_heads * hd)


def _packed(jnp, deform_attn, value, spatial_shapes, locations, weights, valid_shapes=None):
    """Each pixel's 2x2 neighbourhood (itself, right, below, below-right; zeros past the border)
    packed into one row of 4*D: one gather of a quarter as many, four times longer rows."""
    b, s, n_heads, hd = value.shape
    q = locations.shape[1]
    tables, indices, ws, start, packed_start = [], [], [], 0, 0
    for level, (h, w) in enumerate(spatial_shapes):
        v = value[:, start : start + h * w].reshape(b, h, w, n_heads, hd)
        start += h * w
        # rows and columns -1 .. h-1 / w-1 as top-left corners: pad one before, one after
        v = jnp.pad(v, ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0)))
        packed = jnp.concatenate([v[:, :-1, :-1], v[:, :-1, 1:], v[:, 1:, :-1], v[:, 1:, 1:]], axis=-1)
        tables.append(packed.reshape(b, (h + 1) * (w + 1), n_heads, 4 * hd))
        x0, y0, corner_w = deform_attn._bilinear_corners(locations[:, :, :, level], h, w)
        # top-left corners outside [-1, size-1] have all four weights zero: clip them anywhere
        ys, xs = jnp.clip(y0 + 1, 0, h), jnp.clip(x0 + 1, 0, w)
        indices.append(packed_start + ys * (w + 1) + xs)
        ws.append(corner_w * weights[:, :, :, level, :, None])
        packed_start += (h + 1) * (w + 1)
    table = jnp.concatenate(tables, axis=1)  # (B, S', H, 4D)
    s2 = table.shape[1]
    token = jnp.stack(indices, axis=3)  # (B, Q, H, L, P)
    index = (jnp.arange(b)[:, None, None, None, None] * s2 + token) * n_heads
    index = index + jnp.arange(n_heads)[None, None, :, None, None]
    rows = table.reshape(b * s2 * n_heads, 4 * hd)
    gathered = rows.at[index.reshape(-1)].get(mode="promise_in_bounds")
    gathered = gathered.reshape(b, q, n_heads, -1, 4, hd)  # (..., L*P, corner, D)
    weight = jnp.stack(ws, axis=3).reshape(b, q, n_heads, -1, 4)
    return jnp.einsum("bqhkcd,bqhkc->bqhd", gathered, weight).reshape(b, q, n_heads * hd)


def deform_inputs(size: int, batch: int, heads: int = 8, hd: int = 32, points: int = 4, seed: int = 0):
    """Values, and locations as the pixel decoder makes them: every token of every level a query at its
    own pixel centre, its points a few pixels away on each level (offsets ~ N(0, 2 pixels), as a
    trained model's), so that memory is read as locally as in the model."""
    shapes = tuple((-(-size // s), -(-size // s)) for s in (32, 16, 8))
    total = sum(h * w for h, w in shapes)
    rng = np.random.RandomState(seed)
    value = rng.randn(batch, total, heads, hd).astype(np.float32)
    centres = np.concatenate(
        [
            np.stack(np.meshgrid((np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h), -1).reshape(-1, 2)
            for h, w in shapes
        ]
    )  # (S, 2) as (x, y)
    sides = np.array([[w, h] for h, w in shapes], np.float32)  # (L, 2)
    offsets = rng.randn(batch, total, heads, len(shapes), points, 2) * 2.0 / sides[:, None, :]
    locations = (centres[None, :, None, None, None, :] + offsets).astype(np.float32)
    weights = rng.rand(batch, total, heads, len(shapes), points).astype(np.float32)
    weights /= weights.sum(axis=(3, 4), keepdims=True)
    return value, shapes, locations, weights


def bench_deform(args) -> list[dict[str, Any]]:
    import jax
    import jax.numpy as jnp

    value, shapes, locations, weights = deform_inputs(args.size, args.batch)
    variants = _variants()
    expected = None
    fns, compiled_s, rows = {}, {}, []
    for name, fn in variants.items():
        fwd = jax.jit(lambda v, loc, w, fn=fn: fn(v, shapes, loc, w))
        bwd = jax.jit(jax.grad(lambda v, loc, w, fn=fn: jnp.sum(jnp.sin(fn(v, shapes, loc, w))), argnums=(0, 1, 2)))
        for kind, f in (("forward", fwd), ("forward + backward", bwd)):
            exe, seconds = common.timed_once(lambda f=f: f.lower(value, locations, weights).compile())
            compiled_s[(name, kind)] = seconds
            fns[(name, kind)] = lambda exe=exe: jax.block_until_ready(exe(value, locations, weights))
        out = np.asarray(fwd(value, locations, weights))
        if expected is None:
            expected = out
        diff = float(np.abs(out - expected).max())
        rows.append({"variant": name, "max_diff": diff})
    times = common.interleaved(fns, args.runs, args.warmup)
    for row in rows:
        for kind in ("forward", "forward + backward"):
            row[f"{kind} ms"] = common.median(times[(row["variant"], kind)]) * 1e3
    load = common.load_average()
    print(f"deformable sampling: levels {shapes}, batch {args.batch}, 8 heads x 32, 4 points; load {load}")
    print(common.table(rows, [("variant", "variant"), ("forward ms", "forward ms"),
                              ("forward + backward ms", "fwd + bwd ms"), ("max_diff", "max |diff|")]))  # fmt: skip
    return rows


# ----------------------------------------------------------------------------------------------------
# Point sampling


def bench_points(args) -> list[dict[str, Any]]:
    import jax
    import jax.numpy as jnp

    from m2f_jax.losses import points as pts

    variants = {
        "point_sample (one flat gather, used)": pts.point_sample,
        "point_sample_reference (take_along_axis per map)": pts.point_sample_reference,
    }
    rng = np.random.RandomState(0)
    side = args.size // 4
    n = args.batch * args.slots
    maps = rng.randn(n, side, side).astype(np.float32)
    targets = rng.rand(n, args.size, args.size) > 0.5
    cand = rng.rand(n, 3 * args.points, 2).astype(np.float32)
    loss_pts = rng.rand(n, args.points, 2).astype(np.float32)
    shared = rng.rand(args.points, 2).astype(np.float32)
    fns, rows, expected = {}, [], {}
    for name, fn in variants.items():
        cases = {
            f"candidates {3 * args.points} pts, no grad": (jax.jit(fn), (maps, cand)),
            f"loss {args.points} pts, fwd + bwd": (
                jax.jit(jax.grad(lambda m, c, fn=fn: jnp.sum(fn(m, c) ** 2))), (maps, loss_pts)),
            f"target masks {args.size}^2 bool, {args.points} pts": (jax.jit(fn), (targets, loss_pts)),
        }  # fmt: skip
        for case, (f, a) in cases.items():
            exe = f.lower(*a).compile()
            fns[(name, case)] = lambda exe=exe, a=a: jax.block_until_ready(exe(*a))
            out = np.asarray(exe(*a))
            expected.setdefault(case, out)
            rows.append({"variant": name, "case": case, "max_diff": float(np.abs(out - expected[case]).max())})
    query_maps = np.resize(maps, (args.queries, side, side))

    case = f"matcher: {args.queries} maps, {args.points} shared pts"
    expected_shared = None
    shared_variants = (
        ("point_sample_shared (maps as a table of rows, used)", pts.point_sample_shared),
        ("point_sample_shared_reference (each map's pixels)", pts.point_sample_shared_reference),
    )
    for name, fn in shared_variants:
        exe = jax.jit(fn).lower(query_maps, shared).compile()
        fns[(name, case)] = lambda exe=exe: jax.block_until_ready(exe(query_maps, shared))
        out = np.asarray(exe(query_maps, shared))
        expected_shared = out if expected_shared is None else expected_shared
        rows.append({"variant": name, "case": case, "max_diff": float(np.abs(out - expected_shared).max())})
    # choosing the most uncertain quarter of the candidates: XLA's top-k against the bisection
    num_uncertain = int(0.75 * args.points)
    uncertainty = np.abs(rng.randn(min(n, 2 * 16), 3 * args.points)).astype(np.float32)
    case = f"{len(uncertainty)} rows: {num_uncertain} smallest of {3 * args.points}"
    chosen = {}
    for name, fn in (("lax.top_k", lambda u: jnp.sort(jax.lax.top_k(-u, num_uncertain)[1], axis=1)),
                     ("smallest_k (bisection)", lambda u: pts.smallest_k(u, num_uncertain))):  # fmt: skip
        exe = jax.jit(fn).lower(uncertainty).compile()
        fns[(name, case)] = lambda exe=exe: jax.block_until_ready(exe(uncertainty))
        chosen[name] = np.asarray(exe(uncertainty))
        rows.append(
            {"variant": name, "case": case, "max_diff": float(np.abs(chosen[name] - chosen["lax.top_k"]).max())}
        )
    times = common.interleaved(fns, args.runs, args.warmup)
    for row in rows:
        row["ms"] = common.median(times[(row["variant"], row["case"])]) * 1e3
    load = common.load_average()
    print(f"point sampling: {n} maps ({args.batch} images x {args.slots} slots) of {side}x{side}; load {load}")
    print(common.table(rows, [("variant", "variant"), ("case", "case"), ("ms", "ms"), ("max_diff", "max |diff|")]))
    return rows


# ----------------------------------------------------------------------------------------------------
# The matcher


def bench_matcher(args) -> list[dict[str, Any]]:
    import jax

    from m2f_jax.losses.matcher import assign

    rows = []
    predictions = args.predictions
    for queries in args.matcher_queries:
        for targets in args.matcher_targets:
            if targets > queries:
                continue
            for slots in sorted({targets, max(args.matcher_targets)}):
                if slots > queries:
                    continue
                rng = np.random.RandomState(queries + targets)
                cost = rng.rand(predictions, args.batch, queries, slots).astype(np.float32)
                valid = np.zeros((args.batch, slots), bool)
                valid[:, :targets] = True
                fns, answers = {}, {}
                solvers = {"hungarian": assign, "scipy": assign, "optax": _optax_assign}
                for solver, solve in solvers.items():
                    f = jax.jit(lambda c, v, solver=solver, solve=solve: [solve(c[i], v, solver)
                                                                           for i in range(predictions)])  # fmt: skip
                    exe = f.lower(cost, valid).compile()
                    fns[solver] = lambda exe=exe, c=cost, v=valid: jax.block_until_ready(exe(c, v))
                    answers[solver] = np.stack([np.asarray(x) for x in exe(cost, valid)])
                times = common.interleaved(fns, args.runs, args.warmup)

                def total(query, cost=cost, valid=valid):  # the assignment's cost over the valid slots
                    picked = np.take_along_axis(cost, np.maximum(query, 0)[:, :, None, :], 2)[:, :, 0]
                    return np.where(valid, picked, 0).sum(-1)

                best = total(answers["scipy"])
                same = all(bool(np.allclose(total(answers[s]), best, rtol=1e-5)) for s in ("hungarian", "optax"))
                rows.append({"queries": queries, "targets": targets, "slots": slots,
                             "hungarian_ms": common.median(times["hungarian"]) * 1e3,
                             "optax_ms": common.median(times["optax"]) * 1e3,
                             "scipy_ms": common.median(times["scipy"]) * 1e3, "same_cost": same})  # fmt: skip
                print(common.table(rows[-1:], [(k, k) for k in rows[-1]]), flush=True)
    print(f"matcher: {predictions} predictions x batch {args.batch}; load {common.load_average()}")
    print(common.table(rows, [("queries", "queries"), ("targets", "valid targets"), ("slots", "slots (M)"),
                              ("hungarian_ms", "in-graph, valid targets ms (used)"),
                              ("optax_ms", "optax in-graph, every slot ms"), ("scipy_ms", "scipy callback ms"),
                              ("same_cost", "same total cost")]))  # fmt: skip
    return rows


# ----------------------------------------------------------------------------------------------------
# The matched loss: every target slot computed, or the valid ones in chunks


def _optax_assign(cost, valid, solver):
    """`assign` as before: optax's Hungarian algorithm on every column, padded ones included."""
    import jax
    import jax.numpy as jnp

    from m2f_jax.losses import matcher

    cost = jnp.where(valid[:, None, :], jnp.clip(jnp.nan_to_num(cost, nan=1e8), -1e8, 1e8), 0.0)
    return jnp.where(valid, jax.vmap(matcher._hungarian_assign)(jax.lax.stop_gradient(cost)), -1)


def _every_slot_match(class_logits, mask_logits, targets, coords, *, solver, **weights):
    """The matcher reading every target slot, padded ones included."""
    import jax

    from m2f_jax.losses.matcher import assign, matching_cost

    cost = jax.vmap(lambda c, m, t, lab, xy: matching_cost(c, m, t, lab, xy, **weights))(
        class_logits, mask_logits, targets.masks, targets.labels, coords
    )
    return assign(cost, targets.valid, solver)


def bench_loss(args) -> list[dict[str, Any]]:
    """The whole matched loss (every prediction: matcher + CE + point-sampled BCE and dice), forward and
    backward from random outputs, `slots` target slots per image of which 8-20 are valid (COCO), as it
    was (every slot drawn, read and solved) and with each change since, cumulatively."""
    import jax
    import jax.numpy as jnp

    from m2f_jax.losses import LossConfig, criterion, draw_points, loss_from_points, mask2former_loss, matcher
    from m2f_jax.modeling import Mask2FormerOutput
    from m2f_jax.processing.targets import PaddedTargets

    rng = np.random.RandomState(0)
    b, q, side, k = args.batch, args.queries, args.size // 4, 134
    layers = [(rng.randn(b, q, k).astype(np.float32), 2 * rng.randn(b, q, side, side).astype(np.float32))
              for _ in range(args.predictions)]  # fmt: skip
    outputs = Mask2FormerOutput(
        *map(jnp.asarray, layers[-1]),
        tuple({"class_queries_logits": jnp.asarray(c), "masks_queries_logits": jnp.asarray(m)} for c, m in layers[:-1]),
    )
    counts = rng.randint(args.segments[0], args.segments[1] + 1, b)
    valid = np.arange(args.slots)[None, :] < counts[:, None]
    masks = jnp.asarray((rng.rand(b, args.slots, args.size, args.size) > 0.7) & valid[..., None, None])
    targets = PaddedTargets(masks, jnp.asarray(np.where(valid, 1, -1).astype(np.int32)), jnp.asarray(valid))
    config = LossConfig(num_points=args.points)
    key = jax.random.key(0)

    def drawn_up_front(o):
        points = draw_points(key, args.predictions, b, args.slots, config)
        return loss_from_points(o, targets, points, config)[0]

    variants = {  # name: (loss function, {module attribute: stand-in})
        "before: every slot drawn, read, solved (optax)": (drawn_up_front, {
            (matcher, "assign"): _optax_assign, (criterion, "match"): _every_slot_match,
            (criterion, "_mask_losses"): criterion._mask_losses_reference}),
        "+ matcher: valid targets only (augmenting paths)": (drawn_up_front, {
            (criterion, "match"): _every_slot_match, (criterion, "_mask_losses"): criterion._mask_losses_reference}),
        "+ valid slots read in chunks (matcher, mask losses)": (drawn_up_front, {}),
        "+ points drawn per valid slot (the step now)": (
            lambda o: mask2former_loss(o, targets, key, config)[0], {}),
    }  # fmt: skip
    fns, values = {}, {}
    for name, (fn, patches) in variants.items():
        saved = {target: getattr(*target) for target in patches}
        for (module, attr), stand_in in patches.items():
            setattr(module, attr, stand_in)
        try:
            exe = jax.jit(jax.value_and_grad(fn)).lower(outputs).compile()
        finally:
            for (module, attr), original in saved.items():
                setattr(module, attr, original)
        values[name] = float(exe(outputs)[0])
        fns[name] = lambda exe=exe: jax.block_until_ready(exe(outputs))
    times = common.interleaved(fns, args.runs, args.warmup)
    rows = [{"variant": name, "ms": common.median(t) * 1e3, "loss": values[name]} for name, t in times.items()]
    print(f"matched loss, fwd + bwd: {args.predictions} predictions, batch {b}, {q} queries, {side}x{side} masks, "
          f"{args.slots} slots with {counts.tolist()} targets, {args.points} points")  # fmt: skip
    print(f"load {common.load_average()}")
    print(common.table(rows, [("variant", "variant"), ("ms", "ms"), ("loss", "loss value")]))
    return rows


# ----------------------------------------------------------------------------------------------------
# The optimizer update and the step's finite check


def bench_update(args) -> list[dict[str, Any]]:
    """The end of the training step on a preset's parameters: the optax update alone, and with the
    step's check that the loss, gradient norm and updated parameters are finite, the state then kept
    or replaced by `jnp.where` on every array (what step.py did) or by one `lax.cond`."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    import m2f_jax
    from m2f_jax.training.optimizer import OptimizerConfig, build_optimizer, parameter_groups
    from m2f_jax.training.step import all_finite

    config = common.model_config(args.update_preset)
    model = nnx.eval_shape(lambda: m2f_jax.Mask2FormerForUniversalSegmentation(config, rngs=nnx.Rngs(0)))
    shapes = nnx.state(model, nnx.Param)
    rng = np.random.RandomState(0)
    params = jax.tree.map(lambda s: jnp.asarray(rng.randn(*s.shape).astype(np.float32) * 0.02), shapes)
    grads = jax.tree.map(lambda p: p * 1e-3, params)
    tx = build_optimizer(OptimizerConfig(), parameter_groups(model))
    count = sum(x.size for x in jax.tree.leaves(params))

    def update(grads, opt_state, params):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def keep_where(grads, opt_state, params):
        new, new_opt = update(grads, opt_state, params)
        finite = all_finite(jnp.float32(1.0), optax.tree.norm(grads), new)
        keep = lambda n, o: jax.tree.map(lambda a, b: jnp.where(finite, a, b), n, o)  # noqa: E731
        return keep(new, params), keep(new_opt, opt_state)

    def keep_cond(grads, opt_state, params):
        new, new_opt = update(grads, opt_state, params)
        finite = all_finite(jnp.float32(1.0), optax.tree.norm(grads), new)
        return jax.lax.cond(finite, lambda: (new, new_opt), lambda: (params, opt_state))

    variants = {"optax update alone": update, "+ finite check, jnp.where per array": keep_where,
                "+ finite check, one lax.cond": keep_cond}  # fmt: skip
    fns, holders = {}, {}
    for name, fn in variants.items():
        exe = jax.jit(fn, donate_argnums=(1, 2)).lower(grads, tx.init(params), params).compile()
        holders[name] = [tx.init(params), jax.tree.map(jnp.copy, params)]

        def run(exe=exe, h=holders[name]):
            h[1], h[0] = exe(grads, h[0], h[1])
            jax.block_until_ready(h[1])

        fns[name] = run
    times = common.interleaved(fns, args.runs, args.warmup)
    rows = [{"variant": name, "ms": common.median(t) * 1e3, "params_m": count / 1e6} for name, t in times.items()]
    print(f"optimizer update: {args.update_preset}, {count / 1e6:.1f} M parameters; load {common.load_average()}")
    print(common.table(rows, [("variant", "variant"), ("ms", "ms")]))
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parts = ["deform", "points", "matcher", "loss", "update"]
    p.add_argument("--only", nargs="+", default=parts, choices=parts)
    p.add_argument("--update-preset", default="swin-tiny-coco-panoptic", help="the parameters of the update")
    p.add_argument("--size", type=int, default=384, help="input side (deformable levels, mask maps)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--slots", type=int, default=100, help="target slots per image (point sampling)")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--points", type=int, default=12544)
    p.add_argument("--segments", type=int, nargs=2, default=(8, 20), help="loss: valid targets per image, min max")
    p.add_argument("--matcher-queries", type=int, nargs="+", default=[100, 200])
    p.add_argument("--matcher-targets", type=int, nargs="+", default=[10, 50, 100])
    p.add_argument("--predictions", type=int, default=10, help="matcher: predictions per step")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="tiny shapes, one run (smoke test)")
    common.add_thread_flag(p)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.slots, args.queries, args.points = 64, 1, 4, 8, 64
        args.matcher_queries, args.matcher_targets, args.runs, args.warmup = [8], [4], 1, 0
        args.predictions = 2
        args.update_preset, args.segments = common.TINY, (1, 3)
    return args


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    common.check_json_path(args.json)
    common.set_threads(args.threads)
    info = common.environment()
    common.print_environment(info)
    record: dict[str, Any] = {"args": vars(args), "environment": info}
    for part in args.only:
        benches = {"deform": bench_deform, "points": bench_points, "matcher": bench_matcher, "loss": bench_loss,
                   "update": bench_update}  # fmt: skip
        record[part] = benches[part](args)
        record[part + "_load"] = common.load_average()
    common.write_json(args.json, record)
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
