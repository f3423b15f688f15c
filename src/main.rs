//! The `dialtone` binary: load the configuration, start serving, wait for a signal.

use std::path::PathBuf;
use std::process::ExitCode;

use dialtone::config::Settings;
use dialtone::server::{self, Stop};

const USAGE: &str = "usage: dialtone [--config FILE]

Starts the dialtone SIP server. FILE defaults to config/default.toml.
Any key can be overridden from the environment as DIALTONE__SECTION__KEY.";

/// Exit code for a configuration or usage error.
const EXIT_CONFIG: u8 = 2;

fn parse_args() -> Result<PathBuf, String> {
    let mut args = std::env::args().skip(1);
    let mut config = PathBuf::from("config/default.toml");
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => {
                config = args
                    .next()
                    .map(PathBuf::from)
                    .ok_or("--config needs a file path")?;
            }
            "--help" | "-h" => return Err(USAGE.to_string()),
            "--version" | "-V" => return Err(format!("dialtone {}", env!("CARGO_PKG_VERSION"))),
            other => match other.strip_prefix("--config=") {
                Some(path) => config = PathBuf::from(path),
                None => return Err(format!("unknown argument '{other}'\n{USAGE}")),
            },
        }
    }
    Ok(config)
}

fn main() -> ExitCode {
    let path = match parse_args() {
        Ok(path) => path,
        Err(text) => {
            let is_info = text.starts_with("usage") || text.starts_with("dialtone ");
            if is_info {
                println!("{text}");
                return ExitCode::SUCCESS;
            }
            eprintln!("{text}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let settings = match Settings::load(&path) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&settings.log_filter)),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal; log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let mut signals = server::Signals::install();
        let running = match server::start(&settings).await {
            Ok(running) => running,
            Err(err) => {
                eprintln!("dialtone: {err}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(config = %path.display(), version = env!("CARGO_PKG_VERSION"), "dialtone started");
        let how = signals.wait().await;
        running.stop(how).await;
        match how {
            Stop::Graceful => ExitCode::SUCCESS,
            // The conventional status for a process ended by SIGINT.
            Stop::Fast => ExitCode::from(130),
        }
    })
}
