"""One module per `ssmkit` subcommand (see ssmkit.cli): NAME, HELP, ORDER, add_arguments, run."""
