"""The webhook dispatcher: events become signed deliveries to the platforms' endpoints."""
