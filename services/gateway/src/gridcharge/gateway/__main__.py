"""`python -m gridcharge.gateway`: run the gateway alone (its container's entry point)."""

import sys

from gridcharge.gateway.main import main

sys.exit(main())
