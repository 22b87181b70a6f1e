"""`caffesolve` and `python -m caffesolve`: the command line (caffesolve.cli).

The entry point imports the command line inside `main`, so a Ctrl-C while
Python loads NumPy, numba and the rest ends the process quietly with exit
status 130 (128 + SIGINT, as a shell reports it), not with a traceback.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Run the command line; Ctrl-C during start-up exits 130 silently."""
    try:
        from caffesolve.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
