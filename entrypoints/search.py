"""MLproject entry point `search`: the whole AutoML pipeline (`porelab search`)."""

import sys

from _common import fix_options, run

if __name__ == "__main__":
    run("search", fix_options(sys.argv[1:], ("--data", "--storage")))
