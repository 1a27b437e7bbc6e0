//! `sensor`: the daemon and its command line (`cli` declares it, `commands`
//! carries it out). The stages live in the library (`lib.rs`).
mod cli;
mod commands;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, PolicyCommand, QuarantineCommand};
use commands::*;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Run(args) => run(*args),
        Command::Policy {
            command: PolicyCommand::Check { files, vars },
        } => check(&files, &vars.vars()),
        Command::Policy { command } => policy_call(command),
        Command::Getevents(a) => getevents(a),
        Command::Compact { file } => compact(file),
        Command::Unload(d) => unload(&d.bpf_dir),
        Command::Status(d) => status(&d.bpf_dir),
        Command::Probe { load } => probe(load),
        Command::Quarantine {
            command: QuarantineCommand::Apply(p),
        } => quarantine(&p, true),
        Command::Quarantine {
            command: QuarantineCommand::Release(p),
        } => quarantine(&p, false),
    }
}
