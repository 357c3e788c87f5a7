//! `flotilla try --wait` from a clone with local edits: the build's git step
//! checks out the base revision of a real repository and applies the patch;
//! the command exits 0 when the build succeeds, 1 when it fails, and a patch
//! that does not apply fails the build with git's message in the log.

mod common;
#[path = "common/gitrepo.rs"]
mod gitrepo;

use std::path::Path;
use std::process::{Command, Output};

use common::{Cluster, ClusterSpec, flotilla_bin};
use gitrepo::{GitRepo, git};

fn try_in(dir: &Path, api: &str, patch: &Path) -> Output {
    Command::new(flotilla_bin())
        .current_dir(dir)
        .args(["--api", api, "try", "--builder", "check", "--diff"])
        .arg(patch)
        .arg("--wait")
        .output()
        .expect("run flotilla try")
}

fn text(o: &Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn try_builds_local_edits_and_exits_with_their_result() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = GitRepo::init(&tmp.path().join("origin"));
    origin.commit("value.txt", "bad\n", "a value the check refuses");
    origin.commit(
        "check.sh",
        "v=$(cat value.txt); echo value=$v; test \"$v\" = good\n",
        "the check",
    );
    let clone = tmp.path().join("clone");
    git(
        tmp.path(),
        &["clone", "-q", &origin.url(), clone.to_str().unwrap()],
    );
    let spec = ClusterSpec::new(1, 1, "");
    let toml = format!(
        r#"
[[builders]]
name = "check"
workers = {}
  [[builders.steps]]
  name = "checkout"
  kind = "git"
  [[builders.steps]]
  name = "check"
  command = ["sh", "check.sh"]

[[schedulers]]
name = "try"
kind = "try"
repository = "{}"
builders = ["check"]
"#,
        spec.worker_list(),
        origin.url()
    );
    let c = Cluster::start(
        "try_cmd",
        ClusterSpec {
            builders_toml: toml,
            ..spec
        },
    )
    .await;
    let api = c.api(0);
    let patch = tmp.path().join("patch.diff");

    // Base is HEAD of the clone; the local edit makes the check pass.
    std::fs::write(clone.join("value.txt"), "good\n").unwrap();
    std::fs::write(&patch, git(&clone, &["diff", "HEAD"]) + "\n").unwrap();
    // The origin moves on with a commit that would break the check: the
    // try must build on its base revision, not on the branch head.
    origin.commit("check.sh", "exit 1\n", "breaks everything");
    let o = try_in(&clone, &api, &patch);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    std::fs::write(clone.join("value.txt"), "other\n").unwrap();
    std::fs::write(&patch, git(&clone, &["diff", "HEAD"]) + "\n").unwrap();
    let o = try_in(&clone, &api, &patch);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("value=other"), "{}", text(&o));

    let bogus = "--- a/nothere.txt\n+++ b/nothere.txt\n@@ -1 +1 @@\n-x\n+y\n";
    std::fs::write(&patch, bogus).unwrap();
    let o = try_in(&clone, &api, &patch);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("does not apply") || text(&o).contains("nothere.txt"),
        "the patch error is shown: {}",
        text(&o)
    );
    let mut conn = c.connect_db().await;
    let builds: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM builds")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(builds, 3);
}
