"""Stage 1 (the fast model), the decision rules and the classifier worker."""
