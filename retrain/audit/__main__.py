"""python -m retrain.audit --image_dir=DIR --bottleneck_dir=CACHE (and the
model flags of the run that filled the cache): the audit alone, from the
cached bottlenecks. Computes nothing, changes nothing; writes audit.json and
audit.html into --audit_output_dir.

Exit statuses: cli.EXIT_STATUSES (--help prints them).
"""

from absl import flags

from retrain import cli
from retrain import flags as retrain_flags

# Its own flag, then every flag of python -m retrain (the run whose cache
# it reads), in retrain's groups.
GROUPS = cli.FlagGroups()
GROUPS.group("This command")
flags.DEFINE_string("audit_output_dir", "", "Where audit.json and audit.html "
                    "go (default: the folder of --output_graph, where a run "
                    "writes its reports).")
GROUPS.end()
FLAGS = retrain_flags.FLAGS

USAGE = """\
retrain.audit: the audit alone, from the bottlenecks a run cached.

  python -m retrain.audit --image_dir=photos/ --bottleneck_dir=CACHE \\
      [the model flags of that run] [--audit_output_dir=DIR]

Computes nothing and changes nothing; writes audit.json and audit.html.
"""


def main(argv) -> int:
  def job() -> int:
    cli.set_verbosity(FLAGS.logging_verbosity)
    config, hparams, model = retrain_flags.from_argv(argv)
    from retrain import pipeline  # pylint: disable=g-import-not-at-top
    pipeline.audit_cache(config, hparams, model, FLAGS.audit_output_dir)
    return 0
  return cli.run_main(job, "retrain.audit")


run = cli.absl_entry(
    main, "retrain.audit",
    help_text=lambda: GROUPS.help_text(USAGE, more=[retrain_flags.GROUPS]))

if __name__ == "__main__":
  run()
