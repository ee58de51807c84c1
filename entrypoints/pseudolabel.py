"""MLproject entry point `pseudolabel`: pseudo-labels from a registered model (`porelab pseudolabel`)."""

import sys

from _common import fix_options, run

if __name__ == "__main__":
    run("pseudolabel", fix_options(sys.argv[1:], ("--data", "-o", "--out")))
