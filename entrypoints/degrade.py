"""MLproject entry point `degrade`: re-scan with fewer projections / lower exposure (`porelab degrade`)."""

import sys

from _common import fix_options, run

if __name__ == "__main__":
    run("degrade", fix_options(sys.argv[1:], ("-o", "--out")))
