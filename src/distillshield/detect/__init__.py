"""Detection: per-account and cross-account (hydra) extraction detection, batch and online, with reasons.

Entry points: `analyze.analyze_file` (batch, the `distillshield analyze` command), `online.DetectionExtension`
(the gateway), `train.train` (the `distillshield train` command). See docs/detection.md.
"""
