"""Stage 4, beside deploy: know your data. Duplicates, leaks between sets,
likely label errors and outliers, from the cached bottlenecks
(findings.run); photo quality from the cached photo statistics (quality); acting on them when asked (act); `python -m retrain.audit`
audits an existing cache alone.

Imports training, features, data, cache/ and the foundation; nothing above
(deploy and the audit do not import each other).
"""
