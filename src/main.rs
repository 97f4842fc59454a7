//! The `tokengate` binary: parse the command line and run it.

fn main() {}
