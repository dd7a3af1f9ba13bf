"""Data: sources (one per on-disk format), the decode cache, splits and pipelines."""
