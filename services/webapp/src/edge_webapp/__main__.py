"""Serve the webapp: `python -m edge_webapp --host 0.0.0.0 --port 8000 --threads 8`.

Waitress reads each request, headers and body, before one of its threads runs the Flask app, so a
slow or stalled client holds a socket, never a thread: it cannot block the page or /health. A
connection that sends nothing for the channel timeout is closed, a body over the limit is refused
with 413 before it is read, and a body above half a megabyte waits in a temporary file.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import NoReturn

# The app's threads mostly wait for the model server; 8 keep 8 uploads going at once.
THREADS = 8
# Seconds a connection may send nothing (before, within or between requests) before it is closed.
# An upload may pause on a slow mobile uplink: 30 s rides that out.
CHANNEL_TIMEOUT = 30.0
# Multipart framing around an upload of MAX_CONTENT_LENGTH; Flask answers above that.
MULTIPART_SLACK = 64 * 1024
# Open connections at once: slow clients hold sockets, not threads, so allow far more than threads.
CONNECTION_LIMIT = 500


def _exit_on_sigterm(_signum: int, _frame: object) -> NoReturn:
    # Waitress stops on SystemExit: it closes the listener and lets the threads finish their requests.
    sys.exit(0)


def main(argv: list[str] | None = None) -> None:
    """Parse the options and serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m edge_webapp", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind [127.0.0.1]")
    parser.add_argument("--port", type=int, default=8000, help="port [8000]")
    parser.add_argument("--threads", type=int, default=THREADS, help=f"request threads [{THREADS}]")
    parser.add_argument(
        "--channel-timeout",
        type=float,
        default=None,
        help=f"seconds a connection may send nothing before it is closed [{CHANNEL_TIMEOUT:g}]",
    )
    # Waitress has one idle timeout for headers and bodies alike: either name sets it.
    for name in ("--header-timeout", "--body-timeout"):
        parser.add_argument(
            name, type=float, default=None, help="same as --channel-timeout; the larger applies"
        )
    args = parser.parse_args(argv)
    given = [t for t in (args.channel_timeout, args.header_timeout, args.body_timeout) if t is not None]
    channel_timeout = max(given) if given else CHANNEL_TIMEOUT
    if channel_timeout <= 0 or args.threads < 1:
        parser.error("--threads must be at least 1 and the timeouts above 0")

    import logging

    import waitress

    from edge_webapp import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = create_app()
    except ValueError as exc:  # a wrong setting in the environment, said in one line per variable
        parser.exit(2, f"error: {exc}\n")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    waitress.serve(
        app,
        host=args.host,
        port=args.port,
        threads=args.threads,
        channel_timeout=channel_timeout,
        # How often idle connections are looked for: often enough for a timeout of a few seconds.
        cleanup_interval=1,
        # Flask answers oversized uploads with a friendly 413; waitress only stops absurd ones.
        max_request_body_size=app.config["MAX_CONTENT_LENGTH"] + MULTIPART_SLACK,
        connection_limit=CONNECTION_LIMIT,
        # poll(), not select(): select cannot watch a file descriptor numbered 1024 or more.
        asyncore_use_poll=True,
        backlog=1024,
        ident="edge-webapp",
    )


if __name__ == "__main__":
    main()
