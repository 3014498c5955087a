"""The on-device harness. `bench.py` is copied alone into every bundle and imports nothing of edge_sparse."""
