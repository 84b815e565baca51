"""zsqbench: one faithful, shared harness for zero-shot quantization methods."""
__version__ = "0.1.0"
