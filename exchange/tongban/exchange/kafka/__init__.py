"""Kafka mode: the outbox relay, the topics and the Kafka-fed subscription feed."""
