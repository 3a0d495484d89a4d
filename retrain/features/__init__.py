"""Stage 2, the features: the pretrained CNN (frozen GraphDef, TF-Hub module
or SavedModel) and its safety checks, each image's bottleneck (and augmented
copy, and fine-tuning cut activation) computed in process or on Beam and
cached, and the TensorFlow filesystems a cache or photo folder can live on.

Imports data, reports, cache/ and the foundation; nothing above.
"""
