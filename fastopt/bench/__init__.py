"""fastopt's benchmark report: ``python -m fastopt.bench`` (``make bench``).

Modules: ``harness`` (timing, bandwidth, run facts), ``suite`` (the interface
a benchmark family implements), ``suites/`` (one module per family and the
registry), ``runner`` (one run), ``report`` (table, JSON, chart, progress bar)
and ``readme`` (the README's results section from the latest JSON).
"""
