"""Side-by-side benchmarks of the shipped model against the dense one (`make benchmarks`)."""
