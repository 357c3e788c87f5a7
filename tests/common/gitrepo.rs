//! A real git repository in a temporary folder, for the tests of the git
//! poller, the git checkout step and `flotilla try`. Included by those tests
//! with `#[path]` (it is not part of `common`'s module tree).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug)]
pub struct GitRepo {
    pub path: PathBuf,
}

/// Runs git in `dir` with a fixed identity; panics with its output on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Test Author")
        .env("GIT_AUTHOR_EMAIL", "author@example.com")
        .env("GIT_COMMITTER_NAME", "Test Author")
        .env("GIT_COMMITTER_EMAIL", "author@example.com")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl GitRepo {
    /// A new repository at `path` whose branch is `main`.
    pub fn init(path: &Path) -> GitRepo {
        std::fs::create_dir_all(path).expect("create repo folder");
        git(path, &["init", "-q", "-b", "main"]);
        GitRepo {
            path: path.to_owned(),
        }
    }

    /// Writes `file` and commits it; returns the new revision.
    pub fn commit(&self, file: &str, content: &str, message: &str) -> String {
        std::fs::write(self.path.join(file), content).expect("write file");
        git(&self.path, &["add", file]);
        git(&self.path, &["commit", "-q", "-m", message]);
        self.head()
    }

    pub fn head(&self) -> String {
        git(&self.path, &["rev-parse", "HEAD"])
    }

    pub fn url(&self) -> String {
        self.path.display().to_string()
    }
}
