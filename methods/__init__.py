"""Built-in sparsification methods, one module each; registered on import."""
