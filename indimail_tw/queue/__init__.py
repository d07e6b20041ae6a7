"""The durable queue: the only meeting point between receiving and delivering."""
