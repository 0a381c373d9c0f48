"""The nightly feedback loop (`moderation nightly`): see `jobs/README.md`."""
