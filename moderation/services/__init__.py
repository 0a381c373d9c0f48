"""One folder per process: api, worker, recorder, review (each with its app factory)."""
