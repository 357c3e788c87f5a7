//! The reference in `docs/` is complete and true: every command and option
//! of the CLI, every key of the cluster file, every HTTP route and every
//! exit code is described (and every metric in the operations guide); the
//! complete example of the cluster file passes
//! `flotilla check`; and nothing the repository ships points at a document
//! outside it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::flotilla_bin;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn help(args: &[&str]) -> String {
    let mut a = args.to_vec();
    a.push("--help");
    let o = Command::new(flotilla_bin()).args(&a).output().unwrap();
    assert!(o.status.success(), "{args:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Subcommand names listed under `Commands:` of a help page.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_cli_reference_names_every_command_option_and_exit_code() {
    let doc = read("docs/cli.md");
    let mut missing = Vec::new();
    let mut pages: Vec<Vec<String>> = vec![vec![]];
    for c in subcommands(&help(&[])) {
        let sub = subcommands(&help(&[&c]));
        if sub.is_empty() {
            pages.push(vec![c]);
        } else {
            pages.extend(sub.into_iter().map(|s| vec![c.clone(), s]));
        }
    }
    assert!(pages.len() > 15, "{pages:?}");
    for page in &pages {
        let args: Vec<&str> = page.iter().map(String::as_str).collect();
        if !page.is_empty() && !doc.contains(&format!("`flotilla {}`", page.join(" "))) {
            missing.push(format!("command `flotilla {}`", page.join(" ")));
        }
        for word in help(&args).split_whitespace() {
            let option = word.trim_end_matches([',', '.']);
            if option.starts_with("--")
                && option.len() > 2
                && option[2..]
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '-')
                && !doc.contains(&format!("`{option}"))
            {
                missing.push(format!("option {option} of {page:?}"));
            }
        }
    }
    // The variants of `Exit`, written `Name = code,`.
    let exit = read("src/exit.rs");
    let codes: Vec<&str> = exit
        .lines()
        .filter_map(|l| {
            let (name, code) = l.trim().strip_suffix(',')?.split_once(" = ")?;
            let variant = name.chars().all(|c| c.is_ascii_alphabetic());
            (variant && code.parse::<u8>().is_ok()).then_some(code)
        })
        .collect();
    assert!(codes.len() >= 7, "{codes:?}");
    for code in codes {
        if !doc.contains(&format!("| `{code}` |")) {
            missing.push(format!("exit code {code}"));
        }
    }
    missing.dedup();
    assert!(missing.is_empty(), "docs/cli.md lacks: {missing:#?}");
}

/// The `## ...` sections of configuration.md by the table they describe
/// (`[database]`, `[[builders.steps]]`, ...), with their text.
fn config_sections(doc: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for part in doc.split("\n## ").skip(1) {
        let (title, body) = part.split_once('\n').unwrap_or((part, ""));
        if let Some(name) = title
            .strip_prefix('`')
            .and_then(|t| t.strip_suffix('`'))
            .map(|t| t.trim_matches(['[', ']']).to_owned())
        {
            out.push((name, body.to_owned()));
        }
    }
    out
}

/// Every key path (`database.url`, `builders.steps.timeout`, ...) of a
/// configuration, serialised with all its fields.
fn key_paths(v: &serde_json::Value, prefix: &str, out: &mut Vec<(String, String)>) {
    let Some(map) = v.as_object() else { return };
    for (k, child) in map {
        out.push((prefix.to_owned(), k.clone()));
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match child {
            serde_json::Value::Object(_) if !matches!(k.as_str(), "env" | "properties") => {
                key_paths(child, &path, out)
            }
            serde_json::Value::Array(items) => {
                if let Some(first) = items.first().filter(|f| f.is_object()) {
                    key_paths(first, &path, out)
                }
            }
            _ => {}
        }
    }
}

#[test]
fn the_configuration_reference_describes_every_key_and_its_example_checks() {
    let doc = read("docs/configuration.md");
    let example = doc
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a complete example in a ```toml block");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.toml");
    std::fs::write(&file, example).unwrap();
    let o = Command::new(flotilla_bin())
        .args(["check", "--config", file.to_str().unwrap()])
        .env("W1_PASSWORD", "x")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "the example does not check: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Every key the file may hold, from the configuration itself.
    let config = flotilla_master::config::ClusterConfig::from_toml(
        example,
        &file,
        std::iter::empty::<(String, String)>(),
    )
    .unwrap();
    let mut keys = Vec::new();
    key_paths(&serde_json::to_value(&config).unwrap(), "", &mut keys);
    let sections = config_sections(&doc);
    let mut missing = Vec::new();
    for (table, key) in &keys {
        if table.is_empty() {
            // A top-level key is a section of its own.
            if !sections.iter().any(|(name, _)| name == key) {
                missing.push(format!("section [{key}]"));
            }
            continue;
        }
        let body = sections.iter().find(|(name, _)| name == table);
        if !body.is_some_and(|(_, b)| b.contains(&format!("| `{key}` |"))) {
            missing.push(format!("{table}.{key}"));
        }
    }
    assert!(
        missing.is_empty(),
        "docs/configuration.md lacks: {missing:#?}"
    );
    let sources = &sections
        .iter()
        .find(|(n, _)| n == "change_sources")
        .unwrap()
        .1;
    assert!(sources.contains("| `name` | **required** |"), "{sources}");
}

#[test]
fn the_http_reference_names_every_route() {
    let doc = read("docs/http-api.md");
    let mut missing = Vec::new();
    for file in ["master/src/http/mod.rs", "master/src/http/metrics_route.rs"] {
        let src = read(file);
        for part in src.split(".route(").skip(1) {
            let path = part.trim_start().trim_start_matches('"');
            let path = &path[..path.find('"').unwrap()];
            if !doc.contains(&format!(" {path}")) && !doc.contains(&format!(" {path}?")) {
                missing.push(path.to_owned());
            }
        }
    }
    assert!(missing.is_empty(), "docs/http-api.md lacks: {missing:#?}");
}

/// Files the repository ships (what `git ls-files` lists).
fn shipped() -> Vec<PathBuf> {
    let o = Command::new("git")
        .args(["ls-files", "--cached", "--others", "--exclude-standard"])
        .current_dir(root())
        .output()
        .expect("git");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| root().join(l))
        .filter(|p| p.is_file())
        .collect()
}

#[test]
fn nothing_shipped_points_outside_the_repository() {
    // Spelt in two halves so this file does not name it.
    let outside = ["CONTRACT", ".md"].concat();
    let shared = ["../", "shared"].concat();
    let mut offenders = Vec::new();
    for path in shipped() {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        if text.contains(&outside) || text.contains(&shared) {
            offenders.push(path.strip_prefix(root()).unwrap().display().to_string());
        }
    }
    assert!(offenders.is_empty(), "{offenders:#?}");

    // Every document the README links to exists.
    let readme = read("README.md");
    for link in readme.split("](").skip(1) {
        let target = &link[..link.find(')').unwrap()];
        if !target.starts_with("http") {
            assert!(root().join(target).exists(), "README links to {target}");
        }
    }
    assert!(readme.contains("docs/configuration.md") && readme.contains("docs/cli.md"));
}

#[test]
fn the_operations_guide_lists_every_metric() {
    let doc = read("docs/operations.md");
    let src = read("master/src/metrics.rs");
    let names: Vec<&str> = src
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.starts_with("flotilla_") && s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
        .collect();
    assert!(names.len() > 20, "{names:?}");
    let missing: Vec<&&str> = names
        .iter()
        .filter(|n| !doc.contains(&format!("| `{n}` |")))
        .collect();
    assert!(missing.is_empty(), "docs/operations.md lacks {missing:?}");
}
