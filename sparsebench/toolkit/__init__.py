"""Building blocks for method authors: KL terms, noise draws, masks, layer surgery, compiled kernels."""
