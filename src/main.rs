use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    bootagent::crash::install();
    let cli = bootagent::cli::Cli::parse();
    bootagent::logging::init(cli.verbose);
    match cli.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", error.chain());
            ExitCode::from(error.exit_code())
        }
    }
}
