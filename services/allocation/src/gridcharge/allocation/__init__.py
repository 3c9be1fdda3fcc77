"""gridcharge allocation."""
