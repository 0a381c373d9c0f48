"""The agent service: the classifier agent as one durable Dapr workflow per post."""
