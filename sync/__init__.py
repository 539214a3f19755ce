"""ks2os: keep OpenSearch indexes in sync with Amazon Keyspaces tables."""

__version__ = "0.1.0"
