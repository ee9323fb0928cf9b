"""Operators' operations, free of web and CLI frameworks: replay, reports, metrics,
retention, RabbitMQ publisher accounts and sample events."""
