"""``python -m gridcharge.allocation``: the allocation service alone."""

from gridcharge.allocation.main import main

if __name__ == "__main__":
    main()
