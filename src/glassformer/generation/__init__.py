"""Decoding for any model that gives next-token logits with a key/value cache."""
