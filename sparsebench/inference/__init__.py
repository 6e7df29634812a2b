"""Sparse inference: a trained model in several storage formats, checked and timed against dense.

``formats`` builds the formats (thinned, torch CSR, scipy CSR and their combinations),
``sparse_layers`` holds the layers they run, ``size`` counts their bytes, ``timing`` measures
calls, ``benchmark`` puts it together for a run, and ``breakeven`` finds, per layer shape, the
sparsity above which a CSR kernel beats the dense one on this machine.
"""
