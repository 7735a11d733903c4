"""The ground layer: what every other layer stands on and that imports nothing of ours.

config/ (the typed config schema and its seed defaults), configlib (its machinery), errors (every error type,
and which are the user's to fix), records (data formats), metrics (the metrics logger), model_dir (is this a
model folder?), paths (where relative paths point), signals (stop requests).
"""
