"""Subcommands of tools/benchmark.py, one module each."""
