"""Integrations with other stream-processing frameworks (optional extras)."""
