"""The `edge` command line: one Typer app per command group, joined here."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import platform
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import typer

from edge.cli import (
    config,
    data,
    endpoint,
    experiments,
    image,
    model,
    monitor,
    pipeline,
    serve,
    setup,
    up,
    webapp,
)

app = typer.Typer(
    help="Edge: version data, train, track, test and serve a Fashion-MNIST model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(config.app, name="config")
app.add_typer(data.app, name="data")
app.add_typer(pipeline.app, name="pipeline")
app.add_typer(experiments.app, name="experiments")
app.add_typer(image.app, name="image")
app.add_typer(model.app, name="model")
app.add_typer(endpoint.app, name="endpoint")
app.add_typer(webapp.app, name="webapp")
app.add_typer(monitor.app, name="monitor")
app.command("serve")(serve.serve)
app.command("deploy")(endpoint.deploy)
app.command("up")(up.up)
app.command("setup")(setup.setup)


def main() -> None:
    """Run the `edge` command line."""
    # TensorFlow's C++ start-up notices say nothing a user can act on.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    quiet_tensorflow_import()
    if computes_in_batches(sys.argv[1:]):
        enable_onednn()
    app()


def computes_in_batches(args: list[str]) -> bool:
    """Whether the command in `args` may run TensorFlow on large batches, where oneDNN pays."""
    command = next((arg for arg in args if not arg.startswith("-")), "")
    return command not in KEEP_TENSORFLOW_DEFAULTS


# The model server computes small batches, where oneDNN costs more than it saves on an AVX2 core (one
# image: 2.6 ms with it, 1.3 ms without; docs/benchmarks.md), so it keeps TensorFlow's own choice, as
# does `up`, which only starts processes that choose for themselves (the server among them).
KEEP_TENSORFLOW_DEFAULTS = ("serve", "up")


def enable_onednn(machine: str | None = None) -> None:
    """Turn on TensorFlow's oneDNN kernels on x86 unless the user chose (`TF_ENABLE_ONEDNN_OPTS`).

    TensorFlow enables them by default only on x86 CPUs with AVX-512 features; on an AVX2-only core
    they cut the CPU time of a float32 training step by about a third (docs/benchmarks.md). Must run
    before TensorFlow is imported, as here: the CLI imports it lazily.
    """
    if (machine or platform.machine()).lower() in ("x86_64", "amd64"):
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


# What TensorFlow's C++ side prints while it is imported, whatever TF_CPP_MIN_LOG_LEVEL says: absl's
# notice that it is not initialised yet, the oneDNN notice (twice: two libraries load) and the CPU
# features it was not built for. Anything else printed then (a missing CUDA library, an error) stays.
TENSORFLOW_NOISE = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on",
    "cpu_feature_guard.cc",
    "To enable the following instructions:",
)


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """Runs TensorFlow's first import with file descriptor 2 captured, then writes back all but the
    start-up notices (TENSORFLOW_NOISE). Once: later imports find the module already loaded.

    It stays in place until TensorFlow is imported, not merely looked up: libraries look for it
    first and throw the spec away (`importlib.util.find_spec`; Sacred does so when it is imported).
    """

    def find_spec(
        self, fullname: str, path: Any, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        run = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            with _stderr_without(TENSORFLOW_NOISE):
                run(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def quiet_tensorflow_import() -> None:
    """Keep TensorFlow's C++ start-up notices off the terminal when a command imports it (lazily)."""
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlow) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlow())


@contextmanager
def _stderr_without(noise: tuple[str, ...]) -> Iterator[None]:
    """Capture what is written to file descriptor 2 (C++ included); then write back the other lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [
                line
                for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True)
                if not any(part in line for part in noise)
            ]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
