"""Measure what one training step of the default network costs, per precision and instruction set.

A whole pipeline takes minutes; a training step takes milliseconds, so its cost can be measured
on one machine for several settings and turned into the pipeline time of another CPU. Each
setting runs in its own process (TensorFlow reads its settings once, at start): the default
params.yaml network and optimizer, one batch of `train.batch_size` synthetic images, timed over
--steps steps after a warm-up (the median step). The settings:

- bfloat16 and float32, with TensorFlow's deterministic kernels (as `edge.train.train` runs them),
  and bfloat16 without them: what determinism costs;
- float32 with oneDNN limited to AVX2 (`ONEDNN_MAX_CPU_ISA=AVX2`) where the CPU has AVX-512:
  the cost on a CPU without bfloat16 or AVX-512 units;
- bfloat16 without AMX (`ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`) where the CPU has AMX: the cost on
  a CPU whose only bfloat16 units are avx512_bf16's.

Each cost times `train.epochs` x the steps of an epoch gives the training time on that kind of
CPU; add the pipeline benchmark's other stages for a whole `dvc repro`. Results go to
bench-results/steps.json.

    python benchmarks/bench_steps.py [--steps 60] [--params params.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TRAIN_IMAGES = 55_000  # 60,000 less prepare.validation_size's 5,000
WARMUP_STEPS = 10
QUIET_ENV = {"DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
# name -> (train.model.bfloat16, deterministic kernels, extra environment, the CPU flag it needs):
# limiting oneDNN's instruction set measures another CPU only where this one has more than it.
SETTINGS: dict[str, tuple[bool, bool, dict[str, str], str | None]] = {
    "bfloat16, deterministic": (True, True, {}, None),
    "bfloat16, not deterministic": (True, False, {}, None),
    # oneDNN without its AMX kernels: a CPU with avx512_bf16 alone (AMD EPYC).
    "bfloat16, deterministic, no AMX": (True, True, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, "amx_bf16"),
    "float32, deterministic": (False, True, {}, None),
    "float32, deterministic, AVX2 only": (False, True, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, "avx512f"),
}


def measure(params_file: Path, bfloat16: bool, deterministic: bool, steps: int) -> dict[str, Any]:
    """Time `steps` training steps of params.yaml's network in this process (the worker's side)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from edge.model import build_model, resolve_precision
    from edge.pipeline import load_params

    train = load_params(params_file).train
    params = train.model_copy(update={"model": train.model.model_copy(update={"bfloat16": bfloat16})})
    keras.utils.set_random_seed(params.seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    model = build_model(params.model, resolve_precision(params.model.bfloat16))
    model.compile(
        optimizer=keras.optimizers.AdamW(
            learning_rate=params.learning_rate, weight_decay=params.weight_decay
        ),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=params.label_smoothing),
    )
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (params.batch_size, 28, 28), dtype=np.uint8).astype(np.float32)
    labels = np.eye(10, dtype=np.float32)[rng.integers(0, 10, params.batch_size)]
    batches = tf.data.Dataset.from_tensors((images, labels)).repeat()
    ends: list[float] = []

    class StepClock(keras.callbacks.Callback):  # type: ignore[misc]
        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            ends.append(time.perf_counter())

    # One model.fit, as training runs it (one compiled step, Keras's loop): the first steps compile
    # and warm up; a step's cost is the time between two step ends after that.
    model.fit(batches, steps_per_epoch=WARMUP_STEPS + steps, epochs=1, verbose=0, callbacks=[StepClock()])
    times = list(np.diff(ends[WARMUP_STEPS:]))
    return {
        "ms_per_step": 1000 * statistics.median(times),
        "epochs": params.epochs,
        "steps_per_epoch": -(-TRAIN_IMAGES // params.batch_size),
    }


def _run_setting(name: str, params_file: Path, steps: int) -> dict[str, Any]:
    """Measure one setting in a fresh process: TensorFlow reads its environment once, at start."""
    env = {**os.environ, **QUIET_ENV, **SETTINGS[name][2], "TF_ENABLE_ONEDNN_OPTS": "1"}
    cmd = [sys.executable, __file__, "--worker", name, "--params", str(params_file), "--steps", str(steps)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{name}: the measurement failed:\n{done.stderr[-2000:]}")
    return {"setting": name, **json.loads(done.stdout.strip().splitlines()[-1])}


def _load_average() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=60, help="Timed steps per setting, after 10 warm-up steps."
    )
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--output", type=Path, default=REPO / "bench-results" / "steps.json")
    parser.add_argument("--worker", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        bfloat16, deterministic, _, _ = SETTINGS[args.worker]
        print(json.dumps(measure(args.params, bfloat16, deterministic, args.steps)))
        return
    from edge.model import cpu_flags, cpu_name, read_cpuinfo

    cpuinfo = read_cpuinfo()
    cpu, flags = cpu_name(cpuinfo), cpu_flags(cpuinfo)
    kinds = sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    print(f"CPU: {cpu} ({', '.join(kinds) or 'none of avx2, avx512'}), {len(os.sched_getaffinity(0))} cores")
    names = [name for name, (*_, needs) in SETTINGS.items() if needs is None or needs in flags]
    if "avx512_bf16" not in flags and "amx_bf16" not in flags:
        print("This CPU has no native bfloat16: the bfloat16 rows are emulated and slow.")
    load_before = _load_average()
    rows = []
    for name in names:
        print(f"{name}: {args.steps} steps...", flush=True)
        row = _run_setting(name, args.params, args.steps)
        training = row["ms_per_step"] / 1000 * row["steps_per_epoch"] * row["epochs"]
        row["estimated_training_seconds"] = training
        rows.append(row)
        print(
            f"  {row['ms_per_step']:.1f} ms a step: {row['epochs']} epochs of {row['steps_per_epoch']}"
            f" steps take {training / 60:.1f} min",
            flush=True,
        )
    load_after = _load_average()
    print(f"\nload average (1 min): {load_before} before, {load_after} after")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {"cpu": cpu, "flags": kinds, "load_average": [load_before, load_after], "rows": rows}, indent=2
        )
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
