"""gridcharge gateway."""
