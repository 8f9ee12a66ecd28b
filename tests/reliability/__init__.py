"""Reliability: faults of real file systems, processes and permissions (issue 11)."""
