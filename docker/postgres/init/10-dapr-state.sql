-- Run once by the postgres image on an empty data volume, as POSTGRES_USER (the owner) in
-- POSTGRES_DB, after creating it. Dapr's state store (workflow and actor state) lives in its own
-- database, as in the local stack, owned by its own role (moderation/db/roles.py
-- DAPR_STATE_ROLE): daprd logs in as `moderation_dapr` (docker/dapr_secrets.py writes its DSN),
-- which owns the tables Dapr creates and may not connect to the application database.
-- A volume initialised before this script had no such role: daprd cannot log in until these
-- statements have run once as the owner, and Dapr's tables (`state`, `dapr_metadata`) are handed
-- over (`ALTER TABLE ... OWNER TO moderation_dapr` in dapr_state), or the volume is recreated.
\set password `cat /run/secrets/db_dapr_password`
CREATE ROLE moderation_dapr WITH LOGIN PASSWORD :'password';
CREATE DATABASE dapr_state OWNER moderation_dapr;
-- PostgreSQL lets PUBLIC connect to every database; the services log in as the owner here.
REVOKE CONNECT ON DATABASE :"DBNAME" FROM PUBLIC;
