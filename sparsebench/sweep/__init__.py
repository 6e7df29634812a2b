"""Sweeps: a YAML spec becomes an optuna study over RDB storage, run by one or many workers."""
