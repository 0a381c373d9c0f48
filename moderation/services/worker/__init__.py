"""The classifier worker: consumes posts, runs the cascade, publishes verdicts."""
