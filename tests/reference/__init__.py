"""Slow, obvious float64 NumPy oracles, one file per sslit module.

Nothing here imports sslit: a reference must not share code with what it checks.
"""
