"""What a run tells its user: progress lines, the classification report
(report.json, report.txt, the confusion matrix), report.html, and where
the time went (phases).

Bottom layer, beside data: imports only cache/ and the foundation
(retrain.errors, retrain.config).
"""
