"""Sustained durable-ingest benchmark over HTTP: the service against an echo ceiling and a naive baseline."""
