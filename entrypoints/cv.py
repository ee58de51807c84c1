"""MLproject entry point `cv`: cross-validate one configuration (`porelab cv`)."""

import sys

from _common import fix_options, run

if __name__ == "__main__":
    run("cv", fix_options(sys.argv[1:], ("--data", "--labels")))
