//! Stop requests for builds running here that reached another master: the
//! API of any master records them in the database (see
//! `http::build_control`), and the maintenance loop of the master running
//! the build picks them up here.

use crate::db::DbError;
use crate::metrics::BUILDS_STOPPED;
use crate::state::{AbortReason, MasterState};

/// Acts on stop requests recorded through other masters for builds running
/// here. Called from the maintenance loop; costs nothing when nothing runs.
pub async fn pick_up_stop_requests(st: &MasterState) -> Result<(), DbError> {
    let running = st.running_requests();
    if running.is_empty() {
        return Ok(());
    }
    let stop = st.store.take_stop_requests(&running).await?;
    if !stop.is_empty() {
        tracing::info!(requests = ?stop, "stopping builds on request");
        ::metrics::counter!(BUILDS_STOPPED).increment(stop.len() as u64);
        st.abort_builds(Some(&stop), AbortReason::Stopped);
    }
    Ok(())
}
