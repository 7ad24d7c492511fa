"""pytest-benchmark suite for comparing commits (not part of `make test`).

    pytest benchmarks/ --benchmark-autosave          # on the base commit
    pytest benchmarks/ --benchmark-compare           # on the new one: table against the last save

`make bench-compare` does both steps' second half. The figures are medians
over fixed rounds; the interleaved report with bandwidth is `make bench`.
"""

import pytest

# Without the plugin there is no `benchmark` fixture: skip the folder, do not error.
pytest.importorskip("pytest_benchmark", reason="pip install pytest-benchmark")
