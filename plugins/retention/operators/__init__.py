"""Operators of the retention pipeline: thin, each delegating to retention.pipeline and the hooks."""
