"""Users' files to stores to pipelines. Knows no model."""
