//! The project path of a repository URL, as the code hosts' APIs name it:
//! `owner/repo` on GitHub, `group/subgroup/project` on GitLab.
//!
//! Accepted forms: `https://host/owner/repo(.git)`, `http://...`,
//! `ssh://git@host(:port)/owner/repo.git` and the scp-like
//! `git@host:owner/repo.git`, each with or without a trailing slash.

/// The path after the host, without `.git` or slashes around it; `None`
/// when the URL has no host part or fewer than two path segments.
pub fn project_path(url: &str) -> Option<String> {
    let url = url.trim();
    let rest = if let Some((scheme, rest)) = url.split_once("://") {
        if scheme.is_empty() || scheme == "file" {
            return None;
        }
        // host[:port] then the path.
        let (_, path) = rest.split_once('/')?;
        path
    } else {
        // scp-like: [user@]host:path (a local path has no colon before a slash).
        let (host, path) = url.split_once(':')?;
        if host.is_empty() || host.contains('/') {
            return None;
        }
        path
    };
    let path = rest_without_query(rest).trim_matches('/');
    let path = path
        .strip_suffix(".git")
        .unwrap_or(path)
        .trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').collect();
    if segments.len() < 2 || segments.iter().any(|s| s.is_empty()) {
        return None;
    }
    Some(segments.join("/"))
}

fn rest_without_query(s: &str) -> &str {
    s.split(['?', '#']).next().unwrap_or(s)
}

/// `owner` and `repo` of a GitHub repository URL.
pub fn github_repo(url: &str) -> Option<(String, String)> {
    let path = project_path(url)?;
    let (owner, repo) = path.split_once('/')?;
    if repo.contains('/') {
        return None;
    }
    Some((owner.to_owned(), repo.to_owned()))
}

/// A path segment percent-encoded (everything but unreserved characters),
/// as GitLab wants a project path in `/projects/{id}`.
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_url_form_gives_the_project_path() {
        for url in [
            "https://github.com/owner/repo",
            "https://github.com/owner/repo.git",
            "https://github.com/owner/repo/",
            "http://ghe.example.com:8080/owner/repo.git",
            "git@github.com:owner/repo.git",
            "git@github.com:owner/repo",
            "ssh://git@github.com:22/owner/repo.git",
            "https://user:pw@github.com/owner/repo.git",
        ] {
            assert_eq!(project_path(url).as_deref(), Some("owner/repo"), "{url}");
            assert_eq!(
                github_repo(url),
                Some(("owner".into(), "repo".into())),
                "{url}"
            );
        }
    }

    #[test]
    fn gitlab_subgroups_are_kept() {
        for url in [
            "https://gitlab.com/group/sub/project.git",
            "git@gitlab.com:group/sub/project.git",
        ] {
            assert_eq!(
                project_path(url).as_deref(),
                Some("group/sub/project"),
                "{url}"
            );
            assert_eq!(github_repo(url), None);
        }
        assert_eq!(
            encode_component("group/sub/project"),
            "group%2Fsub%2Fproject"
        );
    }

    #[test]
    fn urls_without_a_project_are_refused() {
        for url in [
            "",
            "test",
            "/srv/git/repo",
            "file:///srv/git/repo",
            "https://github.com/onlyowner",
            "https://github.com",
            "git@github.com:",
        ] {
            assert_eq!(project_path(url), None, "{url}");
        }
    }
}
