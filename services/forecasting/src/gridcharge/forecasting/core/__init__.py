"""Pure forecasting core: numpy/pandas over arrays of systems × time, no I/O."""
