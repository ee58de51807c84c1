"""MLproject entry point `simulate`: a simulated dataset (`porelab simulate OUT`)."""

import sys

from _common import absolute, run

if __name__ == "__main__":
    argv = sys.argv[1:]
    run("simulate", [absolute(argv[0]), *argv[1:]] if argv and not argv[0].startswith("-") else argv)
