"""HTTP routes of the ingest API."""
