"""MLproject entry point `train`: train one network (`porelab train`)."""

import sys

from _common import absolute, fix_options, run

if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv and not argv[0].startswith("-"):
        argv = [absolute(argv[0]), *argv[1:]]
    run("train", fix_options(argv, ("-o", "--out")))
