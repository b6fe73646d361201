"""Metrics of the paper: classification (rmnet.metrics.classification) and retrieval (.retrieval)."""
