"""The recorder: projects every topic into the read model."""
