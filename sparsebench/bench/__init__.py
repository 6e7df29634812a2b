"""Timing: sparse inference against dense, CSR break-even per layer shape, training throughput."""
