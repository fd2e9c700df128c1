#!/usr/bin/env python
"""Where the time goes: our forward (or training step) run under jax.profiler, its XLA operations'
times summed by kind (matmul/convolution, gather, scatter, top-k/sort, reductions, layout copies,
elementwise fusions, ...) and by the line of m2f_jax source they come from, forward and backward apart.

Each executed XLA operation (thunk) is an event in the profile, named after its HLO instruction; the
compiled HLO gives the instruction's kind and source line. Times are thread-seconds (two threads
may run operations at the same time), as a share of their sum, next to the wall time per call.

    python bench/hlo_profile.py --what forward --size 384 --batch 1
    python bench/hlo_profile.py --what train --size 384 --batch 2
    python bench/hlo_profile.py --what forward --parts   # backbone / pixel decoder / decoder jitted apart
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time
from typing import Any

import common

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*)$")
_OPCODE = re.compile(r"\s([a-z][\w\-]*)\(")
_SOURCE = re.compile(r'source_file="([^"]+)" source_line=(\d+)')
_FRAME = re.compile(r"stack_frame_id=(\d+)")
_TABLE_ROW = re.compile(r'^(\d+) (?:"(.*)"|\{(.*)\})$')
_OP_NAME = re.compile(r'op_name="([^"]+)"')
_CALLS = re.compile(r"calls=%?([\w.\-]+)")

KINDS = (  # (kind, opcodes: the instruction's or, for a fusion, those fused into it), first match wins
    ("matmul / convolution", {"dot", "convolution"}),
    ("scatter (gather's backward)", {"scatter"}),
    ("gather", {"gather", "dynamic-slice"}),
    ("top-k / sort", {"sort", "custom-call"}),
    ("reduction", {"reduce", "reduce-window", "select-and-scatter"}),
    ("transpose / copy (layout)", {"transpose", "copy"}),
    ("concatenate / pad / slice", {"concatenate", "pad", "slice", "dynamic-update-slice"}),
    ("control flow (while / cond)", {"while", "conditional", "call"}),
)


def _stack_tables(lines: list[str]) -> dict[str, dict[int, Any]]:
    """The FileNames / FunctionNames / FileLocations / StackFrames tables at the top of the HLO text."""
    tables: dict[str, dict[int, Any]] = {}
    current = None
    for line in lines:
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            current = tables.setdefault(line, {})
            continue
        m = _TABLE_ROW.match(line)
        if current is None or not m:
            if current is not None and line.strip():
                current = None
            continue
        key, text, fields = m.groups()
        current[int(key)] = text if text is not None else dict(f.split("=") for f in fields.split())
    return tables


def _frame_source(tables, frame_id: int) -> str:
    """The innermost m2f_jax frame of a stack (file:line function), else the innermost one."""
    frames, locations = tables.get("StackFrames", {}), tables.get("FileLocations", {})
    files, functions = tables.get("FileNames", {}), tables.get("FunctionNames", {})
    first, seen = None, set()
    while frame_id in frames and frame_id not in seen:
        seen.add(frame_id)
        frame = frames[frame_id]
        loc = locations.get(int(frame["file_location_id"]), {})
        path = files.get(int(loc.get("file_name_id", 0)), "?")
        text = (
            f"{os.path.basename(path)}:{loc.get('line', '?')} {functions.get(int(loc.get('function_name_id', 0)), '')}"
        )
        first = first or text
        if "m2f_jax" in path:
            return text
        frame_id = int(frame.get("parent_frame_id", 0)) - 1  # printed one above the parent's id
    return first or "?"


def parse_hlo(text: str) -> dict[str, dict[str, Any]]:
    """HLO instruction name -> {opcode, fused opcodes, source, op_name} from `compiled.as_text()`."""
    lines = text.splitlines()
    tables = _stack_tables(lines)
    computations: dict[str, list[str]] = collections.defaultdict(list)
    instructions: dict[str, dict[str, Any]] = {}
    current = None
    for line in lines:
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            words = line.split()
            current = (words[1] if words[0] == "ENTRY" else words[0]).lstrip("%")
            continue
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        name, rest = m.groups()
        op = _OPCODE.search(" " + rest)
        opcode = op.group(1) if op else "?"
        src, frame = _SOURCE.search(rest), _FRAME.search(rest)
        if frame:
            source = _frame_source(tables, int(frame.group(1)))
        else:
            source = f"{os.path.basename(src.group(1))}:{src.group(2)}" if src else "?"
        opn = _OP_NAME.search(rest)
        calls = _CALLS.search(rest)
        instructions[name] = {
            "opcode": opcode,
            "calls": calls.group(1) if calls else None,
            "source": source,
            "op_name": opn.group(1) if opn else "",
        }
        if current:
            computations[current].append(opcode)
    for info in instructions.values():
        info["fused"] = computations.get(info["calls"], []) if info["calls"] else []
    return instructions


def kind_of(name: str, info: dict[str, Any] | None) -> str:
    opcodes = {name.rsplit(".", 1)[0]} if info is None else {info["opcode"], *info["fused"]}
    for kind, keys in KINDS:
        if opcodes & keys:
            return kind
    return "elementwise fusion / other"


def direction(info: dict[str, Any] | None) -> str:
    if not info:
        return "?"
    name = info["op_name"]
    return "backward" if "transpose(" in name else "forward"


def profile(fn, args, calls: int, folder: str) -> tuple[dict[str, float], float]:
    """Sum of each HLO instruction's event durations (seconds) over `calls` calls, and wall s per call."""
    import jax

    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    with jax.profiler.trace(folder):
        for _ in range(calls):
            jax.block_until_ready(fn(*args))
    wall = (time.perf_counter() - start) / calls
    path = sorted(glob.glob(os.path.join(folder, "**", "*.xplane.pb"), recursive=True))[-1]
    totals: dict[str, float] = collections.defaultdict(float)
    for plane in jax.profiler.ProfileData.from_file(path).planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLA"):
                continue
            # Operations inside a while loop or a conditional are events nested in its event: count each
            # event's own time (its duration less its children's), so nothing is counted twice.
            events = sorted(
                ((e.start_ns, e.duration_ns, dict(e.stats).get("hlo_op")) for e in line.events),
                key=lambda e: (e[0], -e[1]),
            )
            stack: list[list] = []  # [end, name, own time]
            for start_ns, duration, name in events:
                while stack and stack[-1][0] <= start_ns:
                    end, parent, own = stack.pop()
                    if parent:
                        totals[parent] += own * 1e-9 / calls
                if stack:
                    stack[-1][2] -= duration
                stack.append([start_ns + duration, name, duration])
            for _, parent, own in stack:
                if parent:
                    totals[parent] += own * 1e-9 / calls
    return totals, wall


def summarise(totals, instructions, top: int) -> dict[str, Any]:
    by_kind: dict[tuple[str, str], float] = collections.defaultdict(float)
    by_source: dict[tuple[str, str, str], float] = collections.defaultdict(float)
    for name, seconds in totals.items():
        info = instructions.get(name)
        kind = kind_of(name, info)
        way = direction(info)
        by_kind[(kind, way)] += seconds
        by_source[(info["source"] if info else "?", kind, way)] += seconds
    total = sum(totals.values())
    kinds = [{"kind": k, "direction": d, "ms": s * 1e3, "share": s / total} for (k, d), s in
             sorted(by_kind.items(), key=lambda kv: -kv[1])]  # fmt: skip
    sources = [{"source": src, "kind": k, "direction": d, "ms": s * 1e3, "share": s / total} for (src, k, d), s in
               sorted(by_source.items(), key=lambda kv: -kv[1])[:top]]  # fmt: skip
    return {"thread_ms": total * 1e3, "kinds": kinds, "sources": sources}


def targets(args):
    """{name: (jitted function, arguments)} for --what."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    config = common.model_config(args.preset)
    if args.random_init:
        from flax import nnx

        import m2f_jax

        model = m2f_jax.Mask2FormerForUniversalSegmentation(config, rngs=nnx.Rngs(0))
    else:
        _, model, _ = common.same_weights(config)
    pixels = jnp.asarray(np.random.RandomState(0).randn(args.batch, args.size, args.size, 3), jnp.float32)
    if args.what == "forward":
        if not args.parts:
            return {"forward": (jax.jit(lambda m, x: m(x).class_queries_logits), (model, pixels))}
        return forward_parts(model, pixels)
    import train_step

    targs = train_step.parse_args(["--preset", args.preset, "--size", str(args.size), "--batch", str(args.batch)])
    import types

    from m2f_jax.training import experiment
    from m2f_jax.training.mesh import global_batch, make_mesh

    _, _, folder = common.same_weights(config)
    c = train_step.experiment_config(targs, folder, config.num_queries)
    source = types.SimpleNamespace(classes=[{"name": n} for _, n in sorted(config.id2label.items())])
    model_config = experiment.model_config(c, source)
    opt_config, _ = experiment.optimizer_config(c)
    mesh = make_mesh(1, devices=jax.devices()[:1])
    graphdef, state = experiment.initial_state(c, model_config, opt_config, mesh)
    host = train_step.random_batch(0, args.batch, args.size, config.num_labels, c.data.max_instances, (8, 20))
    batch = global_batch(host, mesh)
    parts = train_step.step_parts(c, model_config, graphdef, state, batch)
    name = "forward + backward, matched loss"
    fn, fargs = parts[name][:2]
    out = {name: (fn, fargs)}
    if args.update:
        out["optimizer update (clip + AdamW)"] = parts["optimizer update (clip + AdamW)"][:2]
    return out


def forward_parts(model, pixels):
    """The backbone, the pixel decoder and the transformer decoder, each jitted alone."""
    import jax

    from m2f_jax.modeling.valid_region import FeatureMap, image_sizes

    b, h, w, _ = pixels.shape
    backbone = model.model.pixel_level_module.encoder
    pixel_decoder = model.model.pixel_level_module.decoder
    transformer = model.model.transformer_module
    image = FeatureMap(pixels, image_sizes(None, b, h, w))
    features = jax.jit(lambda m, x: m(x))(backbone, image)
    decoded = jax.jit(lambda m, f: m(f))(pixel_decoder, features)
    return {
        "backbone": (jax.jit(lambda m, x: m(x)), (backbone, image)),
        "pixel decoder": (jax.jit(lambda m, f: m(f)), (pixel_decoder, features)),
        "transformer decoder": (
            jax.jit(lambda m, f, mf: m(f, mf).masks_queries_logits[-1]),
            (transformer, decoded.multi_scale_features, decoded.mask_features),
        ),
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--what", choices=["forward", "train"], default="forward")
    p.add_argument("--preset", default="swin-tiny-coco-panoptic")
    p.add_argument("--size", type=int, default=384)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--calls", type=int, default=2)
    p.add_argument("--parts", action="store_true", help="forward: backbone, pixel decoder, decoder apart")
    p.add_argument("--update", action="store_true", help="train: the optimizer update too")
    p.add_argument("--random-init", action="store_true", help="our own random weights (no HF model)")
    p.add_argument("--top", type=int, default=25)
    common.add_thread_flag(p)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    common.check_json_path(args.json)
    common.set_threads(args.threads)
    info = common.environment()
    common.print_environment(info)
    record: dict[str, Any] = {"args": vars(args), "environment": info, "targets": {}}
    for name, (fn, fargs) in targets(args).items():
        compiled = fn.lower(*fargs).compile()
        instructions = parse_hlo(compiled.as_text())
        with tempfile.TemporaryDirectory() as folder:
            totals, wall = profile(compiled, fargs, args.calls, folder)
        summary = summarise(totals, instructions, args.top)
        flops = common.compiled_flops(compiled)
        summary.update(wall_ms=wall * 1e3, gflops=flops / 1e9 if flops else None, load=common.load_average())
        record["targets"][name] = summary
        print(f"\n## {name}: {wall * 1e3:.0f} ms per call (wall), {summary['thread_ms']:.0f} thread-ms in XLA "
              f"operations, {summary['gflops'] or 0:.1f} GFLOP; load {summary['load']}")  # fmt: skip
        print(common.table(summary["kinds"], [("kind", "kind"), ("direction", "direction"), ("ms", "thread-ms"),
                                              ("share", "share")]))  # fmt: skip
        columns = [("source", "source line"), ("kind", "kind"), ("direction", "direction"), ("ms", "thread-ms"),
                   ("share", "share")]  # fmt: skip
        print(common.table(summary["sources"], columns))
    common.write_json(args.json, record)
    return record


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]) and 0)
