//! The `tokengate` command line: subcommands and their exit codes.
