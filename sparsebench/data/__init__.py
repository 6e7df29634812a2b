"""Dataset readers and the on-device batch provider."""
