"""Stage 4, deployment: every export format (frozen graph, SavedModel,
TFLite) with the JSON that describes it, and the classifiers that load each
export for label_image.

Imports training, features, data, reports, cache/ and the foundation.
"""
