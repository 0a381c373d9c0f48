"""The prompt-injection screen: rules, the learned detector and its corpus."""
