"""Event transport: Kafka (kafka-python) and the in-process bus with the same interface."""
