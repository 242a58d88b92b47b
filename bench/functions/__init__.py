"""Functions deployed only by the benchmarks (``FAASPIPE_FUNCTION_DIRS=bench/functions``)."""
