"""retrain: transfer learning from a folder of labeled photos to a classifier.

Data flows one way: files -> split -> bottlenecks (cache) -> training -> export.
`retrain.pipeline.run` is the library entry point; `python -m retrain` is the
command line over it.
"""

__version__ = "0.1.0"
