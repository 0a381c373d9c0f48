"""Human review: the review service (a Dapr app), its workflow and activities."""
