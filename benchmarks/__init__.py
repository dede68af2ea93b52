"""genprov benchmarks: speed and memory against peer libraries (run with ``make bench``)."""
