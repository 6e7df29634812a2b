"""Built-in tasks, one module each; registered on import."""
