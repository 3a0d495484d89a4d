"""python -m retrain.audit --image_dir=DIR --bottleneck_dir=CACHE (and the
model flags of the run that filled the cache): the audit alone, from the
cached bottlenecks. Computes nothing, changes nothing; writes audit.json and
audit.html into --audit_output_dir.

Exit status: 0 done, 2 bad input (one line on stderr), 130 interrupted.
"""

from absl import flags

from retrain import cli
from retrain import flags as retrain_flags

flags.DEFINE_string("audit_output_dir", "", "Where audit.json and audit.html "
                    "go (default: the folder of --output_graph, where a run "
                    "writes its reports).")
FLAGS = retrain_flags.FLAGS


def main(argv) -> int:
  def job() -> int:
    cli.set_verbosity(FLAGS.logging_verbosity)
    config, hparams, model = retrain_flags.from_argv(argv)
    from retrain import pipeline  # pylint: disable=g-import-not-at-top
    pipeline.audit_cache(config, hparams, model, FLAGS.audit_output_dir)
    return 0
  return cli.run_main(job, "retrain.audit")


run = cli.absl_entry(main, "retrain.audit")

if __name__ == "__main__":
  run()
