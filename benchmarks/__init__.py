"""Speed comparisons: ``python -m benchmarks.NAME [--quick]`` (CONTRIBUTING.md, "a benchmark")."""
