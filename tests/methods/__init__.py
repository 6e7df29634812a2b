"""Tests of the built-in method plugins, one module per method."""
