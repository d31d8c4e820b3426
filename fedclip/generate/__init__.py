"""The learned Med-AIGC generator: a label-conditioned diffusion model trained on any dataset dir.

VisionCLIP's synthetic corpus came from a diffusion model trained on private fundus photographs, so
whether such a generator copies its patients is the ethical question. This package trains one
(`train`), with or without patient-level DP-SGD charged to the hospital's lifetime ledger, and samples
normal dataset dirs from it (`sample`); `fedclip.audits.generator` asks whether it copies.

Modules: `model` (registered configs, conditioning from the taxonomy, checkpoint contract), `train`
(the loop, EMA, resume, DP), `sample` (DDIM sampling into a dataset dir).
"""
