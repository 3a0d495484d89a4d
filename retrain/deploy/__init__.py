"""Stage 4, deployment: every export format (frozen graph, SavedModel,
TFLite, TensorFlow.js, ONNX) with what describes it, written by one call
(exports.export_all), and the classifiers that load each export for
label_image.

Imports training, features, data, reports, cache/ and the foundation.
"""
