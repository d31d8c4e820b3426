"""Privacy audits: membership inference, empirical epsilon lower bounds, canary exposure, déjà-vu
memorization, data copying, learned generators, and the reports a privacy officer signs.

Pure scoring lives in `attacks`, `metrics` and `bounds`; what touches models and data in `signals`,
`references`, `confound` and one module per audit (`mia`, `epsilon`, `exposure`, `dejavu`, `copying`,
`generator`, whose population-calibrated attacks live in `generator_calibration`); the audit dir's seam
(file names, errors, the target's privacy, provenance) in `results`; what a privacy officer reads in the
`report` package.
"""
