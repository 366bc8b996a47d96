"""Benchmarks (`make bench`): loopback only, bounded in count and time, print numbers."""
