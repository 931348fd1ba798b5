"""Personalize streaming ingestor: keeps Amazon Personalize datasets in step with a Kafka change stream."""

__version__ = "0.1.0"
