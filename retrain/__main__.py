"""python -m retrain --image_dir=DIR: retrain a classifier on a photo folder.

Exit statuses: cli.EXIT_STATUSES (--help prints them).
"""

from retrain import cli
from retrain import flags as retrain_flags

FLAGS = retrain_flags.FLAGS


def main(argv) -> int:
  def job() -> int:
    cli.set_verbosity(FLAGS.logging_verbosity)
    config, hparams, model = retrain_flags.from_argv(argv)
    from retrain import pipeline  # pylint: disable=g-import-not-at-top
    if config.only_bottlenecks:
      pipeline.cache_bottlenecks(config, hparams, model)
    else:
      pipeline.run(config, hparams, model)
    return 0
  return cli.run_main(job, "retrain")


USAGE = """\
retrain: a folder of labeled photos in, a deployable image classifier out.

  python -m retrain --image_dir=photos/ [flags]     (or: retrain ...)

photos/<label>/*.jpg, one sub-folder per class. Writes the classifier
(--output_graph, --output_labels, and the formats asked for below), its
report and audit beside --output_graph, and caches every photo's
bottleneck in --bottleneck_dir, so the next run on these photos starts
from there.
"""


def help_text() -> str:
  return retrain_flags.GROUPS.help_text(USAGE)


run = cli.absl_entry(main, "retrain", help_text=help_text)

if __name__ == "__main__":
  run()
