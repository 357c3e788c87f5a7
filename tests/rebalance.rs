//! After a rolling restart, idle workers settle on the masters that
//! rendezvous hashing picks for them — the last master restarted is not left
//! without workers.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Cluster, ClusterSpec, eventually};
use nix::sys::signal::Signal;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_workers_move_back_after_a_rolling_restart() {
    let mut spec = ClusterSpec::new(3, 6, "");
    spec.builders_toml = format!(
        "[[builders]]\nname = \"echo\"\nworkers = {}\n  [[builders.steps]]\n  name = \"e\"\n  command = [\"true\"]\n",
        spec.worker_list()
    );
    let mut cluster = Cluster::start("rebalance", spec).await;
    for i in 0..3 {
        cluster.signal_master(i, Signal::SIGTERM);
        assert_eq!(
            cluster.masters[i].proc.wait_exit(Duration::from_secs(30)),
            Some(0)
        );
        cluster.restart_master(i);
        cluster.wait_ready().await;
    }
    let placement = eventually(
        "workers where rendezvous hashing puts them",
        Duration::from_secs(40),
        || async {
            let masters = cluster
                .get(&format!("{}/api/v1/masters", cluster.api(0)))
                .await?;
            let masters: Vec<(String, i64)> = masters
                .as_array()?
                .iter()
                .map(|m| {
                    (
                        m["name"].as_str().unwrap().to_owned(),
                        m["id"].as_i64().unwrap(),
                    )
                })
                .collect();
            if masters.len() != 3 {
                return None;
            }
            let workers = cluster
                .get(&format!("{}/api/v1/workers", cluster.api(0)))
                .await?;
            let mut placement = HashMap::new();
            for w in workers.as_array()? {
                let name = w["name"].as_str()?;
                let at = w["master"].as_str()?;
                let want = flotilla_gateway::routing::pick(
                    name,
                    masters.iter().map(|(n, id)| (n.as_str(), *id, n.clone())),
                )?;
                if at != want || w["connected"] != true {
                    return None;
                }
                placement.insert(name.to_owned(), at.to_owned());
            }
            (placement.len() == 6).then_some(placement)
        },
    )
    .await;
    eprintln!("placement after the rolling restart: {placement:?}");
    let ids = [
        cluster.force(0, "echo", "a").await,
        cluster.force(1, "echo", "b").await,
        cluster.force(2, "echo", "c").await,
    ];
    for row in cluster
        .wait_complete(0, &ids, Duration::from_secs(30))
        .await
    {
        assert_eq!(row["results"], "success");
    }
}
