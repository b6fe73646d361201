"""Retrieval: deep-hashing objectives, codes, a persistent index and search."""
