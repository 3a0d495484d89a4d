"""What a run tells its user: progress lines, the classification report
(report.json, report.txt, the confusion matrix) and report.html.

Bottom layer, beside data: imports only cache/ and the foundation
(retrain.errors, retrain.config).
"""
