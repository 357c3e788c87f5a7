//! `flotilla logs BUILD [--follow]`: a build's step output from the
//! terminal, step by step with headers. With `--follow` it keeps printing
//! as the output is written (like `fly watch`) and exits with the build's
//! result: 0 for success or warnings, 1 otherwise.

use std::time::Duration;

use super::follow::{Follower, is_good};
use crate::cli::LogsArgs;
use crate::client::ApiClient;
use crate::exit::{self, Exit};

const POLL: Duration = Duration::from_millis(250);

pub async fn run(api: &ApiClient, a: &LogsArgs) -> Exit {
    let mut f = Follower::new(a.build, String::new());
    loop {
        match f.poll(api).await {
            Ok(Some(build)) => {
                let results = build.results.unwrap_or_else(|| "unknown".into());
                eprintln!(
                    "build {} ({} #{}): {results}",
                    build.id, build.builder, build.number
                );
                return if is_good(&results) {
                    Exit::Ok
                } else {
                    Exit::Failed
                };
            }
            Ok(None) if a.follow => tokio::time::sleep(POLL).await,
            Ok(None) => {
                f.flush();
                eprintln!(
                    "build {} is still running (--follow to keep reading)",
                    a.build
                );
                return Exit::Ok;
            }
            Err(e) => return exit::client_error(&e),
        }
    }
}
