"""cnnlab: a workbench for CNNs on small grayscale image datasets."""

__version__ = "0.1.0"
