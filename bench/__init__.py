"""Benchmarks and measurement tools for omega-vlm (run on the accelerator machine); see bench/README.md."""
