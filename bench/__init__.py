"""camflow's benchmark harness: ``python -m bench`` (``--quick`` for CI-sized runs).

Every figure is measured in the same run as its baseline and printed as a ratio, with the
goal it is held to; machines differ, ratios on one machine don't. The suite asserts
behaviour, this reports figures: nothing here fails on a slow machine.
"""
