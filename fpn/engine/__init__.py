"""Training and evaluation, apart from the model code: the training loop (loop.py), its schedule, presets,
checkpoints and exact resumption (checkpoint.py, resume.py, rng_state.py), the non-finite guard (nonfinite.py),
processes (distributed.py), memory figures (memory.py), and COCO evaluation of detections (evaluation.py) and of
proposals (proposal_eval.py). It builds on fpn/detectors and fpn/data; nothing in the model code imports it.
"""
