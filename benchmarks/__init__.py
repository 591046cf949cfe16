"""Side-by-side benchmarks: `python -m hf_ext.benchmarks.<name>` or `hf-ext bench <name>`."""
