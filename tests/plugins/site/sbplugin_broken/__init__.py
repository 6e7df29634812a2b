"""A plugin that fails on import, as one with a missing dependency or a bug would."""

raise RuntimeError("broken on purpose")
