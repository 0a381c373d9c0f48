"""Training and evaluation data: pinned sources, readers and the split."""
