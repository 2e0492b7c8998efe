"""`python -m tests.standin` (`make emulate`): rehearse the cloud path on this machine, for free.

Starts every stand-in of tests/standin/emulate.py for one new project (every API disabled, as
Google leaves one), prints the environment that points `edge` at them, and runs until Ctrl-C.
Then, in another shell with that environment, the README's "Train on Vertex AI", "Deploy to
Vertex AI" and "CI/CD" sections, with `--project edge-local` given to `edge config`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time

from tests.standin.emulate import emulation


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops everything as Ctrl-C does, children included


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="make emulate", description=__doc__.splitlines()[0])
    parser.add_argument("--project", default="edge-local", help="the project id the stand-ins know")
    parser.add_argument("--owner", default="user:developer@example.com", help="who owns it (roles/owner)")
    parser.add_argument(
        "--enable-delay",
        type=float,
        default=5.0,
        help="seconds an enabled API takes to answer (Google: minutes)",
    )
    parser.add_argument(
        "--account-propagation",
        type=float,
        default=5.0,
        help="seconds before a new service account can be bound in a policy (Google: up to a minute)",
    )
    parser.add_argument(
        "--health-timeout",
        type=float,
        default=180.0,
        help="seconds deployModel waits for a server's health route before it fails",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    with emulation(
        project=args.project,
        owner=args.owner,
        enable_delay=args.enable_delay,
        account_propagation=args.account_propagation,
        health_timeout=args.health_timeout,
    ) as emulated:
        print(emulated.describe())
        sys.stdout.flush()
        reported: set[str] = set()
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(1)
                for job_id, job in list(emulated.cloud.jobs.jobs.items()):
                    if job.finished.is_set() and job_id not in reported:
                        reported.add(job_id)
                        print(f"job {job_id}: state {job.state}", file=sys.stderr)
    os._exit(0)


if __name__ == "__main__":
    main()
