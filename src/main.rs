use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    bootagent::crash::install();
    let cli = bootagent::cli::Cli::parse();
    bootagent::logging::init(cli.verbose);
    match cli.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // A closed stderr must not turn the error's own exit code into a panic's.
            let _ = writeln!(std::io::stderr(), "error: {}", error.chain());
            ExitCode::from(error.exit_code())
        }
    }
}
