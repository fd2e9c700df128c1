"""Training data: sources (one sample representation for every data set), augmentations, the grain
pipeline and the compact batch format the jitted step expands on the device."""
