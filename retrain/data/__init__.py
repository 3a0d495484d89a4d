"""Stage 1, the files: finding images and labels, the stable split, decoding
and resizing (TensorFlow's ops, or Pillow by the same rule), and each
decoded photo's statistics (photo_stats) for the audit's photo quality.

Bottom layer: imports only cache/ and the foundation (retrain.errors,
retrain.config).
"""
