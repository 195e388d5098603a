"""Hooks of the retention package."""
