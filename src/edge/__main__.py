"""Run the `edge` command line as `python -m edge`."""

from edge.cli import main

main()
