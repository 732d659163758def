"""ctxdistill: write a constitution, see what it changes, and distil it into the weights."""

__version__ = "0.1.0"
