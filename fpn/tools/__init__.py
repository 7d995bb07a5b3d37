"""The command-line tools: each parses its flags, calls the library and turns its errors into one line and an
exit code (fpn.tools.cli). `scripts/*.py` and `python -m fpn.predict` / `python -m fpn.export` are their doors."""
