"""The edges: Kafka (aiokafka source, sink, topic admin, auth, lag), the Redis session store, their
in-memory twins, and the health endpoints. They implement the core's ports."""
