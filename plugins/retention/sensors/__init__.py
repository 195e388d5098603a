"""Sensors of the retention package."""
