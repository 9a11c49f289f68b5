"""Connections and state: the connection service, the state store, secrets,
live status, operator accounts, the audit log and the views the CLI and HTTP share."""
