"""hvsim benchmarks: see README.md and run.py."""
