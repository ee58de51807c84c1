"""MLproject entry point `retrain`: supervised study on pseudo-labels, registered (`porelab retrain`)."""

import sys

from _common import fix_options, run

if __name__ == "__main__":
    run("retrain", fix_options(sys.argv[1:], ("--data", "--labels", "--storage")))
