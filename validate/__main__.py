"""`python -m fabricsim.validate ...`: the validate CLI alone, for machines without the simulator (the GPU image)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
