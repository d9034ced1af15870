"""
Benchmarks for C{splicing}.

Run them as modules from the project root, e.g.
C{python -m benchmarks.tcp_throughput --help}.
"""
