//! Arrows one way: the import graph between the top-level modules of
//! `master/src` has no cycle, shared state (`state`) sits at the bottom and
//! the task tree (`master`) at the top.
//!
//! The graph is read from the source text: every `crate::a` and every
//! `super::` path that climbs to the crate root (in `use` lines and in
//! code alike) is an arrow from the module of the file to `a`. Comments are
//! left out, so a doc link is no arrow.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

/// An arrow's first witness: the file and line that makes it.
type Witness = String;
/// From a top-level module to the ones it uses, each with a witness.
type Graph = BTreeMap<String, BTreeMap<String, Witness>>;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file: `lib.rs` is `[]`, `a.rs` and `a/mod.rs` are
/// `[a]`, `a/b.rs` is `[a, b]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_owned());
    }
    parts
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn ident_at(s: &str) -> &str {
    let end = s.find(|c: char| !is_ident(c)).unwrap_or(s.len());
    &s[..end]
}

/// The first segment of each path in a `{a::b, c, d::{e, f}}` group that
/// starts `s` (just after its `{`).
fn group_heads(s: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut expect_head = true;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => expect_head = true,
            c if depth == 0 && expect_head && is_ident(c) => {
                heads.push(ident_at(&s[i..]).to_owned());
                expect_head = false;
            }
            _ => {}
        }
    }
    heads
}

/// The top-level modules a line of code names, read from the file at `path`.
fn targets(line: &str, path: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let code = line.split("//").next().unwrap_or("");
    for (at, _) in code.match_indices(['c', 's']) {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| is_ident(c) || c == '$') {
            continue;
        }
        let tail = &code[at..];
        let after_root = if let Some(t) = tail.strip_prefix("crate::") {
            t
        } else if tail.starts_with("super::") {
            let mut t = tail;
            let mut climbs = 0;
            while let Some(next) = t.strip_prefix("super::") {
                t = next;
                climbs += 1;
            }
            if climbs < path.len() {
                continue;
            }
            t
        } else {
            continue;
        };
        if let Some(group) = after_root.strip_prefix('{') {
            out.extend(group_heads(group));
        } else {
            out.push(ident_at(after_root).to_owned());
        }
    }
    out
}

fn graph() -> Graph {
    let root = src_dir();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|f| module_path(f.strip_prefix(&root).unwrap()).first().cloned())
        .collect();
    let mut graph = Graph::new();
    for file in &files {
        let rel = file.strip_prefix(&root).unwrap();
        let path = module_path(rel);
        let Some(from) = path.first() else { continue };
        let text = std::fs::read_to_string(file).unwrap();
        let arrows = graph.entry(from.clone()).or_default();
        for (n, line) in text.lines().enumerate() {
            for to in targets(line, &path) {
                if &to != from && modules.contains(&to) {
                    arrows
                        .entry(to)
                        .or_insert_with(|| format!("{}:{}", rel.display(), n + 1));
                }
            }
        }
    }
    graph
}

/// A shortest cycle through `start`, as its arrows, if there is one.
fn cycle_through(graph: &Graph, start: &str) -> Option<Vec<(String, String)>> {
    let mut came_from: BTreeMap<String, String> = BTreeMap::new();
    let mut queue = VecDeque::from([start.to_owned()]);
    while let Some(node) = queue.pop_front() {
        for next in graph.get(&node).into_iter().flat_map(|a| a.keys()) {
            if next == start {
                let mut arrows = vec![(node.clone(), next.clone())];
                let mut at = node.clone();
                while at != start {
                    let prev = came_from[&at].clone();
                    arrows.push((prev.clone(), at));
                    at = prev;
                }
                arrows.reverse();
                return Some(arrows);
            }
            if !came_from.contains_key(next) {
                came_from.insert(next.clone(), node.clone());
                queue.push_back(next.clone());
            }
        }
    }
    None
}

fn describe(graph: &Graph, arrows: &[(String, String)]) -> String {
    arrows
        .iter()
        .map(|(a, b)| format!("  {a} -> {b}  ({})", graph[a][b]))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_reader_finds_every_kind_of_arrow() {
    let at = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        targets("use crate::state::MasterState;", &at(&["http", "reads"])),
        ["state"]
    );
    assert_eq!(
        targets(
            "use crate::{db::Store, metrics as m};",
            &at(&["runtime", "claim_loop"])
        ),
        ["db", "metrics"]
    );
    assert_eq!(
        targets(
            "        crate::http::serve(l, st).await; // not crate::janitor",
            &at(&["master"])
        ),
        ["http"]
    );
    assert_eq!(
        targets("use super::super::db::Store;", &at(&["http", "reads"])),
        ["db"]
    );
    assert!(targets("use super::build::spawn;", &at(&["runtime", "claim_loop"])).is_empty());
    assert!(targets("let lost = $crate::db::x; supercrate::y", &at(&["db"])).is_empty());
}

#[test]
fn the_top_level_modules_import_each_other_without_a_cycle() {
    let graph = graph();
    assert!(graph.len() > 5, "read too little: {graph:#?}");
    let mut cycles = Vec::new();
    let mut seen = BTreeSet::new();
    for node in graph.keys() {
        if seen.contains(node) {
            continue;
        }
        if let Some(arrows) = cycle_through(&graph, node) {
            seen.extend(arrows.iter().map(|(a, _)| a.clone()));
            cycles.push(describe(&graph, &arrows));
        }
    }
    assert!(
        cycles.is_empty(),
        "modules of master/src import each other in a circle:\n{}",
        cycles.join("\n\n")
    );
}

#[test]
fn the_task_tree_is_on_top_and_shared_state_at_the_bottom() {
    let graph = graph();
    let users_of = |module: &str| -> Vec<String> {
        graph
            .iter()
            .filter(|(_, arrows)| arrows.contains_key(module))
            .map(|(from, arrows)| format!("{from} ({})", arrows[module]))
            .collect()
    };
    assert!(graph.contains_key("master"), "no module `master`");
    assert!(graph.contains_key("state"), "no module `state`");
    let on_master = users_of("master");
    assert!(
        on_master.is_empty(),
        "the task tree is used by {on_master:?}"
    );
    // Shared state knows the configuration, the database and the metric
    // names, and none of the tasks that use it.
    let below_state = ["config", "db", "metrics", "cron"];
    let above: Vec<String> = graph["state"]
        .iter()
        .filter(|(to, _)| !below_state.contains(&to.as_str()))
        .map(|(to, at)| format!("{to} ({at})"))
        .collect();
    assert!(above.is_empty(), "shared state uses {above:?}");
}

/// The top-level modules in the order `lib.rs` lists them (`//! - [`a`]: ...`).
fn listed_order() -> Vec<String> {
    let lib = std::fs::read_to_string(src_dir().join("lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| l.strip_prefix("//! - [`"))
        .filter_map(|l| l.split_once("`]").map(|(name, _)| name.to_owned()))
        .collect()
}

#[test]
fn every_arrow_points_down_the_list_in_lib_rs() {
    let graph = graph();
    let order = listed_order();
    assert!(order.len() > 5, "lib.rs lists {order:?}");
    let rank = |m: &str| order.iter().position(|o| o == m);
    let mut upward = Vec::new();
    for (from, arrows) in &graph {
        for (to, at) in arrows {
            // A module lib.rs does not list yet is held only to the cycle test.
            if let (Some(a), Some(b)) = (rank(from), rank(to))
                && a > b
            {
                upward.push(format!("{from} -> {to} ({at})"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that point up the list of modules in lib.rs: {upward:#?}"
    );
}
