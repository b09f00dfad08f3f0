"""The convention of every command-line entry point: a user error (a missing or malformed file, a bad option) is one
`PROG: error: MESSAGE` line on stderr and exit status 2, as argparse's own errors, without a traceback."""

import sys
from pathlib import Path

USER_ERRORS = (OSError, ValueError)


def fail(message, prog=None):
    """Print `PROG: error: MESSAGE` (on one line) to stderr and exit with status 2."""
    print(f"{prog or Path(sys.argv[0]).name}: error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(2)


def run(main, argv=None, prog=None, errors=USER_ERRORS):
    """`main(argv)`, with the `errors` it raises reported by [`fail`]."""
    try:
        return main(argv)
    except errors as error:
        fail(error, prog)
