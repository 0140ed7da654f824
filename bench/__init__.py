"""Benchmarks (`make bench`) and the chaos run (`make chaos`) against real processes."""
