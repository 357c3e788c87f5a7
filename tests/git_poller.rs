//! The git poller: commits made to a real repository become changes exactly
//! once — while its master runs, after that master is killed (another takes
//! the poller over from the state in the database), and across a graceful
//! restart that moves it again.

mod common;
#[path = "common/gitrepo.rs"]
mod gitrepo;

use std::time::Duration;

use common::{Cluster, ClusterSpec, eventually};
use gitrepo::GitRepo;

async fn revisions(c: &Cluster) -> Vec<String> {
    let mut conn = c.connect_db().await;
    sqlx::query_scalar("SELECT revision FROM changes ORDER BY changeid")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

async fn owner(c: &Cluster) -> Option<String> {
    let mut conn = c.connect_db().await;
    sqlx::query_scalar(
        "SELECT m.name FROM object_owners o JOIN masters m ON m.id = o.masterid \
         WHERE o.kind = 'changesource' AND o.name = 'poller' AND m.active = 1",
    )
    .fetch_optional(&mut conn)
    .await
    .unwrap()
}

async fn wait_revisions(c: &Cluster, expected: &[String]) {
    let got = eventually(
        &format!("{} changes", expected.len()),
        Duration::from_secs(40),
        || async {
            let r = revisions(c).await;
            (r.len() >= expected.len()).then_some(r)
        },
    )
    .await;
    // Branches are polled in name order, so only the set is compared.
    let (mut got, mut expected) = (got, expected.to_vec());
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "each commit exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commits_become_changes_exactly_once_across_a_kill_and_a_restart() {
    let repo_dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::init(repo_dir.path());
    repo.commit("a.txt", "0", "history before the poller");
    let toml = format!(
        r#"
[[builders]]
name = "b"
workers = []
  [[builders.steps]]
  name = "s"
  command = ["true"]

[[change_sources]]
name = "poller"
kind = "git"
repository = "{}"
branches = ["main", "feature"]
poll_interval = "300ms"
"#,
        repo.url()
    );
    let mut c = Cluster::start("git_poller", ClusterSpec::new(2, 0, &toml)).await;
    let first = eventually("a poller owner", Duration::from_secs(20), || owner(&c)).await;
    // The first poll only records where the branches are.
    eventually("the first poll", Duration::from_secs(20), || async {
        let mut conn = c.connect_db().await;
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM object_state WHERE objectname = 'changesource:poller'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        (n == 1).then_some(())
    })
    .await;
    let mut expected = vec![
        repo.commit("a.txt", "1", "first"),
        repo.commit("b.txt", "2", "second"),
    ];
    wait_revisions(&c, &expected).await;

    let i = c.masters.iter().position(|m| m.name == first).unwrap();
    c.kill9_master(i);
    expected.push(repo.commit("a.txt", "3", "while the owner is dead"));
    gitrepo::git(&repo.path, &["checkout", "-q", "-b", "feature"]);
    expected.push(repo.commit("f.txt", "4", "a new branch"));
    gitrepo::git(&repo.path, &["checkout", "-q", "main"]);
    wait_revisions(&c, &expected).await;
    let second = owner(&c).await.expect("an owner");
    assert_ne!(second, first, "the poller moved");

    // Start the dead master again, then stop the owner gracefully.
    c.restart_master(i);
    c.wait_ready().await;
    let j = c.masters.iter().position(|m| m.name == second).unwrap();
    c.signal_master(j, nix::sys::signal::Signal::SIGTERM);
    assert!(
        c.masters[j]
            .proc
            .wait_exit(Duration::from_secs(30))
            .is_some(),
        "the owner did not stop"
    );
    expected.push(repo.commit("a.txt", "5", "after the move"));
    wait_revisions(&c, &expected).await;
    assert_eq!(owner(&c).await.as_deref(), Some(first.as_str()));
    // Nothing more arrives later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(revisions(&c).await.len(), expected.len());
    let mut conn = c.connect_db().await;
    let files: String = sqlx::query_scalar("SELECT files FROM changes ORDER BY changeid LIMIT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(files, r#"["a.txt"]"#);
}
