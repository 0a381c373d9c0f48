-- Run once by the postgres image on an empty data volume (after creating POSTGRES_DB).
-- Dapr's state store (workflow and actor state) lives in its own database, as in the local stack.
CREATE DATABASE dapr_state;
