"""``python -m gridcharge.allocation``: the allocation service alone."""

import sys

from gridcharge.allocation.main import main

if __name__ == "__main__":
    sys.exit(main())
