"""Serve the webapp: `python -m edge_webapp --host 0.0.0.0 --port 8000 --threads 8`.

An asyncio front (edge_webapp.server) reads each request, headers and body, before one of the
threads runs the Flask app, so a slow or stalled client holds a socket, never a thread: it cannot
block the page or /health, and the header and body timeouts close it.
"""

from __future__ import annotations

import argparse
import logging

# The app's threads mostly wait for the model server; 8 keep 8 uploads going at once.
THREADS = 8
# Seconds from a connection's start (or its previous answer) to a request's complete headers.
HEADER_TIMEOUT = 5.0
# Seconds for an upload's body: 10 MB at a slow mobile uplink's 3 Mbit/s takes about 27 s.
BODY_TIMEOUT = 30.0
# Multipart framing around an upload of MAX_CONTENT_LENGTH; Flask answers above that.
MULTIPART_SLACK = 64 * 1024


def main(argv: list[str] | None = None) -> None:
    """Parse the options and serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m edge_webapp", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind [127.0.0.1]")
    parser.add_argument("--port", type=int, default=8000, help="port [8000]")
    parser.add_argument("--threads", type=int, default=THREADS, help=f"request threads [{THREADS}]")
    parser.add_argument(
        "--header-timeout", type=float, default=HEADER_TIMEOUT, help=f"seconds [{HEADER_TIMEOUT:g}]"
    )
    parser.add_argument(
        "--body-timeout", type=float, default=BODY_TIMEOUT, help=f"seconds [{BODY_TIMEOUT:g}]"
    )
    args = parser.parse_args(argv)

    from aiohttp import web

    from edge_webapp import create_app
    from edge_webapp.server import QuietBadRequests, build

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.server").addFilter(QuietBadRequests())
    app = create_app()
    server = build(
        app,
        threads=args.threads,
        # Flask answers oversized uploads with a friendly 413; the front only stops absurd ones.
        max_body=app.config["MAX_CONTENT_LENGTH"] + MULTIPART_SLACK,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
    )
    web.run_app(server, host=args.host, port=args.port, access_log=None, backlog=1024, shutdown_timeout=10)


if __name__ == "__main__":
    main()
