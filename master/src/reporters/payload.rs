//! Working out what a delivery sends, once, when it is prepared: the API
//! path, the status, the JSON body, and the topic its order is kept in.
//!
//! Statuses: GitHub `pending` when a build starts, `success` (also for
//! warnings and skipped), `failure`, or `error` (exception, cancelled) when
//! it ends; GitLab `running`, then `success`, `failed` or `canceled`. A
//! build ended as `retry` will run again, so it reports `pending`.

use serde_json::json;
use sha2::{Digest, Sha256};

use super::repository::{encode_component, github_repo, project_path};
use crate::config::ReporterConfig;
use crate::db::outbox::Phase;
use crate::db::{Prepared, ReportedBuild, ReportedSource, Results};

/// What `reporter` sends for `phase` of `build`; `Err` says why there is
/// nothing to send (no source stamp a code host could know).
pub fn prepare(
    reporter: &ReporterConfig,
    build: &ReportedBuild,
    phase: Phase,
    dashboard: &str,
) -> Result<Prepared, String> {
    let url = format!("{}/#/builds/{}", dashboard.trim_end_matches('/'), build.id);
    match reporter.kind.as_str() {
        "http" => Ok(http_document(reporter, build, phase, &url)),
        kind => commit_status(kind, reporter, build, phase, &url),
    }
}

fn topic(parts: &[&str]) -> String {
    hex::encode(Sha256::digest(parts.join("\n").as_bytes()))
}

/// GitHub's name for a build's state.
pub fn github_state(phase: Phase, results: Option<Results>) -> &'static str {
    match (phase, results) {
        (Phase::Started, _) | (_, None | Some(Results::Retry)) => "pending",
        (_, Some(Results::Success | Results::Warnings | Results::Skipped)) => "success",
        (_, Some(Results::Failure)) => "failure",
        (_, Some(Results::Exception | Results::Cancelled)) => "error",
    }
}

/// GitLab's name for a build's state.
pub fn gitlab_state(phase: Phase, results: Option<Results>) -> &'static str {
    match (phase, results) {
        (Phase::Started, _) => "running",
        (_, None | Some(Results::Retry)) => "pending",
        (_, Some(Results::Success | Results::Warnings | Results::Skipped)) => "success",
        (_, Some(Results::Failure | Results::Exception)) => "failed",
        (_, Some(Results::Cancelled)) => "canceled",
    }
}

fn description(build: &ReportedBuild, phase: Phase) -> String {
    match (phase, build.results) {
        (Phase::Started, _) | (_, None) => {
            format!("{} #{} started", build.builder, build.number)
        }
        (_, Some(r)) => format!("{} #{}: {}", build.builder, build.number, r.name()),
    }
}

/// The first source stamp with a revision whose repository names a
/// project of this kind of host, and that project's API path.
fn reported_source<'a>(
    kind: &str,
    build: &'a ReportedBuild,
) -> Option<(&'a ReportedSource, String, &'a str)> {
    build.sources.iter().find_map(|s| {
        let sha = s.revision.as_deref().filter(|r| !r.is_empty())?;
        let path = if kind == "github" {
            let (owner, repo) = github_repo(&s.repository)?;
            format!("/repos/{owner}/{repo}/statuses/{sha}")
        } else {
            let project = project_path(&s.repository)?;
            format!(
                "/projects/{}/statuses/{}",
                encode_component(&project),
                encode_component(sha)
            )
        };
        Some((s, path, sha))
    })
}

fn commit_status(
    kind: &str,
    reporter: &ReporterConfig,
    build: &ReportedBuild,
    phase: Phase,
    url: &str,
) -> Result<Prepared, String> {
    let (source, path, sha) = reported_source(kind, build).ok_or_else(|| {
        format!(
            "no source stamp of build {} has a revision and a {kind} repository URL",
            build.id
        )
    })?;
    let branch = source.branch.as_deref().unwrap_or_default();
    let context = reporter.context_for(&build.builder, branch);
    let (state, body) = if kind == "github" {
        let state = github_state(phase, build.results);
        let body = json!({
            "state": state,
            "target_url": url,
            "description": description(build, phase),
            "context": context,
        });
        (state, body)
    } else {
        let state = gitlab_state(phase, build.results);
        let mut body = json!({
            "state": state,
            "target_url": url,
            "description": description(build, phase),
            "name": context,
        });
        if !branch.is_empty() {
            body["ref"] = json!(branch);
        }
        (state, body)
    };
    Ok(Prepared {
        topic: topic(&[&reporter.name, &source.repository, sha, &context]),
        status: state.to_owned(),
        target: path,
        body: body.to_string(),
    })
}

fn http_document(
    reporter: &ReporterConfig,
    build: &ReportedBuild,
    phase: Phase,
    url: &str,
) -> Prepared {
    let sources: Vec<serde_json::Value> = build
        .sources
        .iter()
        .map(|s| {
            json!({
                "repository": s.repository,
                "branch": s.branch,
                "revision": s.revision,
                "project": s.project,
                "codebase": s.codebase,
            })
        })
        .collect();
    let finished = phase == Phase::Finished;
    let body = json!({
        "event": phase.name(),
        "reporter": reporter.name,
        "build": {
            "id": build.id,
            "number": build.number,
            "builder": build.builder,
            "url": url,
            "started_at": build.started_at,
            "complete_at": if finished { json!(build.complete_at) } else { json!(null) },
            "results": if finished { json!(build.results.map(Results::name)) } else { json!(null) },
        },
        "sources": sources,
    });
    Prepared {
        topic: topic(&[&reporter.name, "build", &build.id.to_string()]),
        status: phase.name().to_owned(),
        target: String::new(),
        body: body.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(results: Option<Results>, repo: &str) -> ReportedBuild {
        ReportedBuild {
            id: 9,
            number: 3,
            builder: "unit".into(),
            results,
            started_at: chrono::Utc::now(),
            complete_at: None,
            sources: vec![ReportedSource {
                repository: repo.into(),
                branch: Some("main".into()),
                revision: Some("abc123".into()),
                project: String::new(),
                codebase: String::new(),
            }],
        }
    }

    fn reporter(kind: &str) -> ReporterConfig {
        toml::from_str(&format!(
            "name = \"r\"\nkind = \"{kind}\"\ntoken_env = \"T\"\ncontext = \"ci/{{builder}}\""
        ))
        .unwrap()
    }

    #[test]
    fn github_statuses_go_to_the_commit_with_the_context() {
        let r = reporter("github");
        let b = build(Some(Results::Failure), "git@github.com:o/r.git");
        let p = prepare(&r, &b, Phase::Finished, "http://ci/").unwrap();
        assert_eq!(p.target, "/repos/o/r/statuses/abc123");
        assert_eq!(p.status, "failure");
        let body: serde_json::Value = serde_json::from_str(&p.body).unwrap();
        assert_eq!(body["context"], "ci/unit");
        assert_eq!(body["target_url"], "http://ci/#/builds/9");
        let started = prepare(&r, &b, Phase::Started, "http://ci").unwrap();
        assert_eq!(started.status, "pending");
        assert_eq!(started.topic, p.topic, "one commit and context, one topic");
    }

    #[test]
    fn gitlab_statuses_name_the_encoded_project() {
        let r = reporter("gitlab");
        let b = build(Some(Results::Cancelled), "https://gitlab.com/g/sub/p.git");
        let p = prepare(&r, &b, Phase::Finished, "http://ci").unwrap();
        assert_eq!(p.target, "/projects/g%2Fsub%2Fp/statuses/abc123");
        assert_eq!(p.status, "canceled");
        assert_eq!(
            prepare(&r, &b, Phase::Started, "http://ci").unwrap().status,
            "running"
        );
    }

    #[test]
    fn a_build_without_a_host_repository_has_nothing_to_report() {
        let r = reporter("github");
        assert!(prepare(&r, &build(None, "test"), Phase::Started, "http://ci").is_err());
    }

    #[test]
    fn every_result_has_a_state() {
        for res in Results::ALL {
            let gh = github_state(Phase::Finished, Some(res));
            assert!(["pending", "success", "failure", "error"].contains(&gh));
            let gl = gitlab_state(Phase::Finished, Some(res));
            assert!(["pending", "success", "failed", "canceled"].contains(&gl));
        }
        assert_eq!(
            github_state(Phase::Finished, Some(Results::Retry)),
            "pending"
        );
    }
}
