"""Developer tooling: the local stack, benchmarks, the load generator and the demo. Never imported
by a service."""
