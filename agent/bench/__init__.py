"""Benchmarks: `floodguard bench datapath` and `floodguard bench prefixes`.

Benchmarks measure and print; they never assert (tests/ do that). Each one
builds its own programs under a bpffs directory of its own and removes it
when it ends, however it ends.
"""
