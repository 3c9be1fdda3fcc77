"""gridcharge forecasting."""
