"""gridcharge simulator."""
