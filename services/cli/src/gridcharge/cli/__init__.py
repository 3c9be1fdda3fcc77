"""gridcharge cli."""
