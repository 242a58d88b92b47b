"""Functions deployed only by the autoscaling benchmark (``bench/autoscale.py``)."""
