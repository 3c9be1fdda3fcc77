"""`python -m gridcharge.simulator`: a scenario in real time against a running gateway (see live.py)."""

import sys

from gridcharge.simulator.live import main

sys.exit(main())
