"""Loops that connect Kafka (``ct_stream.kafka``) to the pure logic."""
