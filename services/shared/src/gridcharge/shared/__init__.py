"""gridcharge shared."""
