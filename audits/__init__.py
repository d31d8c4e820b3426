"""Privacy audits: membership inference, empirical epsilon lower bounds, reports.

Pure scoring lives in `attacks`, `metrics` and `bounds`; what touches models and data in `signals`,
`references`, `mia`, `canaries`; what a privacy officer reads in `report`.
"""
