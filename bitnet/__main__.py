"""`python -m bitnet infer ...` / `python -m bitnet serve ...`: the two CLIs of `bitnet.cli`."""

import sys

from bitnet.cli import main

if __name__ == "__main__":
    sys.exit(main())
