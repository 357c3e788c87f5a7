//! SIGINT and SIGTERM: the first starts a graceful shutdown, a second one
//! stops at once (claims are still released on the way out).

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Tokens cancelled by the first and the second signal.
#[derive(Clone, Debug, Default)]
pub struct Signals {
    pub graceful: CancellationToken,
    pub immediate: CancellationToken,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        let s = Signals::default();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let tokens = s.clone();
        tokio::spawn(async move {
            let mut seen = 0;
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                seen += 1;
                if seen == 1 {
                    tracing::info!(
                        "shutting down gracefully (send the signal again to stop at once)"
                    );
                    tokens.graceful.cancel();
                } else {
                    tracing::warn!("second signal: stopping at once");
                    tokens.immediate.cancel();
                    tokens.graceful.cancel();
                }
            }
        });
        Ok(s)
    }
}
