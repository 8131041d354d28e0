"""An app and a docker-compose stack to watch seawall's telemetry (see README.md)."""
