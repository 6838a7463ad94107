use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    custodia::cli::Cli::parse().run().await
}
