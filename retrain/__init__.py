"""retrain: transfer learning from a folder of labeled photos to a classifier.

Data flows one way: files -> split -> bottlenecks (cache) -> training -> export,
and so do the packages, each importing only those before it:

  data/      finding images, labels, the split, decoding and resizing
  reports/   progress, the classification report, report.html
  features/  the pretrained CNN, bottlenecks computed and cached (and on Beam)
  training/  the new softmax layer, fine-tuning the CNN's top
  deploy/    every export and the classifiers that load them

Over them, the job: `checks` (flags against each other), `pipeline` (`run`,
the library entry point, as named stages), `flags` and `cli` (the command
line); under everything, the foundation every stage shares: `errors`,
`config` (the immutable settings tuples) and `tfimport`. Entry points:
`python -m retrain` (__main__) and `python -m retrain.label_image`.
"""

__version__ = "0.1.0"
