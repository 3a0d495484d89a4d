"""python -m retrain --image_dir=DIR: retrain a classifier on a photo folder.

Exit status: 0 done, 2 bad input (one line on stderr), 130 interrupted.
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


run = cli.absl_entry(main, "retrain")

if __name__ == "__main__":
  run()
