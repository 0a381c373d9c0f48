"""`moderation bench`: two benchmarks, one module each.

- `pipeline`: throughput and latency of the pipeline against the real local stack (`bench`);
  `loadgen` drives its ingest phase.
- `agent`: the cascade's agent stage against the configured LLM endpoint (`bench --agent`);
  `tally` says where each post ended, `performance` how fast the agent ran.
- `report`: what both share (machine, latency percentiles, the JSON file in bench-results/).

Callers import from the defining module.
"""
