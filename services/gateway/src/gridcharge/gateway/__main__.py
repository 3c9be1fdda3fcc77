"""`python -m gridcharge.gateway`: run the gateway alone (its container's entry point)."""

from gridcharge.gateway.main import main

main()
