"""What the Dapr apps (the review and agent services) share: tokens, pub/sub, workflow reads."""
