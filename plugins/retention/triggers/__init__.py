"""Triggers of the retention package."""
