"""Training metrics: a console line, a JSONL file and TensorBoard event files (process 0 only)."""

from __future__ import annotations

import json
import os
import time

CONSOLE_KEYS = ("loss", "loss_cross_entropy", "loss_mask", "loss_dice", "grad_norm", "learning_rate", "images_per_s")


class MetricsLog:
    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        from tensorboardX import SummaryWriter

        os.makedirs(workdir, exist_ok=True)
        self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115 (open for the run; close())
        self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: dict[str, float], eta_s: float | None = None) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, "time": time.time(), **scalars}) + "\n")
        self.jsonl.flush()
        for name, value in scalars.items():
            self.tensorboard.add_scalar(name, value, step)
        self.tensorboard.flush()
        keys = [k for k in CONSOLE_KEYS if k in scalars] + [k for k in scalars if k.startswith("eval/")]
        shown = "  ".join(f"{k} {scalars[k]:.4g}" for k in keys)
        eta = "" if eta_s is None else f"  eta {int(eta_s) // 60}m{int(eta_s) % 60:02d}s"
        print(f"step {step}  {shown}{eta}", flush=True)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tensorboard.close()
