"""Benchmarks of the faaspipe platform (``make bench``); results go to ``bench/results/``."""
