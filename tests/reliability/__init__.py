"""Reliability tests: each pins a fault found by an adversarial run (issue 11)."""
