"""MLproject entry point `train`: train one network (`porelab train`)."""

import sys

from _common import fix_options, run

if __name__ == "__main__":
    run("train", fix_options(sys.argv[1:], ("--data", "-o", "--output", "--checkpoints")))
