"""The `edge` command line: one Typer app per command group, joined here."""

from __future__ import annotations

import os
import platform
import sys

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
