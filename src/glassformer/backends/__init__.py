"""How the parts run fast: kernels, one floor below ``glassformer.nn``.

``glassformer.nn`` holds the parts as their formulas say (the reference paths); each asks here, at one dispatch
point, for a faster way to compute the same thing, and runs its plain path where there is none:

    kernels      every optional kernel in one table, probed on first use against the plain computation,
                 ``GLASSFORMER_KERNELS`` to switch them off
    cpu/         the CPU's: oneDNN's packed weights and AMX's reordered products (``onednn``), the quantized
                 products (``quantized``) and the whole decoding step (``decoder``) as torch operators built from
                 ``cpu/csrc`` (``extension``)

Nothing here imports ``glassformer.nn`` or anything above it.
"""
