"""Every number of a comparison table, counted by the core on the exported model."""
