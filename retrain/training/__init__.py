"""Stage 3, training: the new softmax layer trained by SGD on cached
bottlenecks (its regularization chosen on the exact optima of the same
loss), and fine-tuning of the CNN's top on cached cut activations.

Imports features, data, reports, cache/ and the foundation; nothing above.
"""
