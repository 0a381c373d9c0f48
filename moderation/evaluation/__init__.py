"""Offline evaluation: scores, cascade runs, leave-one-source-out and the model card."""
