"""The top layer: running experiments (train, load, evaluate), the bandwidth sweep's spec
parsing, rendering examples, and every CLI command's implementation (:mod:`.commands`)."""
