use std::process::ExitCode;

use clap::Parser;

// glibc malloc showed up as ~17% of server CPU under load (many small short-lived buffers
// across worker threads); mimalloc's thread-local heaps cut that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    custodia::cli::Cli::parse().run().await
}
