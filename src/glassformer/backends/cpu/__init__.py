"""The CPU backend: oneDNN and AMX paths for float weights (``onednn``), glassformer's quantized products
(``quantized``) and fused decoding step (``decoder``), both torch operators built from ``csrc/`` (``extension``)."""
