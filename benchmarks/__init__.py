"""Side-by-side benchmarks of kwneuro_pydra against its peers: ``python -m benchmarks.run``."""
