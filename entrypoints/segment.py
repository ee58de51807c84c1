"""MLproject entry point `segment`: segment a scan with a model (`porelab segment`)."""

import sys

from _common import absolute, fix_options, run

if __name__ == "__main__":
    argv = fix_options(sys.argv[1:], ("-o", "--output"))
    for i, arg in enumerate(argv[:-1]):          # a relative model folder, not a registered name
        if arg == "--model" and __import__("os").path.isdir(absolute(argv[i + 1])):
            argv[i + 1] = absolute(argv[i + 1])
    run("segment", argv)
