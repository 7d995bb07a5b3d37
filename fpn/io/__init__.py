"""Reading and writing detector files: loading a detector for inference (`fpn.io.loading`)."""
