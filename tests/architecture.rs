//! The shape of the code (docs/architecture.md): the modules of `src/` import each other
//! without a circle, and the configuration is a leaf.
//!
//! A module here is a top-level module of the crate: `src/backup.rs`, or a folder such as
//! `src/config/` with its parts (the parts of one folder may use each other). An import is
//! any `crate::NAME` path in the code (doc comments and test modules left out).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The modules `src/config/` may use: they import nothing of the crate above them.
const CONFIG_MAY_USE: &[&str] = &[
    "bwlimit",
    "error",
    "exclude",
    "retention",
    "retry",
    "secrets",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without its test module (always last in this crate) and comments.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module a file belongs to: `backup` for `cmd/backup.rs`, `config` for
/// `config/hook.rs`, `archive` for `archive.rs`.
fn module_of(rel: &Path) -> String {
    let mut parts = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned());
    let mut first = parts.next().unwrap();
    if first == "cmd" {
        match parts.next() {
            Some(second) if second != "mod.rs" => first = second,
            _ => {}
        }
    }
    first.trim_end_matches(".rs").to_string()
}

/// The commands: the modules under `src/cmd/`.
fn commands() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/cmd");
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string()
        })
        .filter(|n| n != "mod")
        .collect()
}

/// The top-level modules each top-level module of `src/` imports.
fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut modules = BTreeSet::new();
    for f in &files {
        modules.insert(module_of(f.strip_prefix(&src).unwrap()));
    }
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let me = module_of(f.strip_prefix(&src).unwrap());
        if me == "main" || me == "lib" || me == "cmd" {
            continue;
        }
        let text = code(&std::fs::read_to_string(f).unwrap());
        let deps = graph.entry(me.clone()).or_default();
        let mut names = Vec::new();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // use crate::{a, b::c};
                let end = group.find('}').unwrap_or(group.len());
                names.extend(group[..end].split(',').map(|s| s.trim().to_string()));
            } else {
                names.push(rest.to_string());
            }
        }
        for n in names {
            let n = n.strip_prefix("cmd::").unwrap_or(&n);
            let head: String = n
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if head != me && modules.contains(&head) {
                deps.insert(head);
            }
        }
    }
    graph
}

/// Every circle of imports, as the modules in it (Tarjan's strongly connected components).
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'g> {
        g: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on: BTreeSet<&'g str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'g>(t: &mut T<'g>, v: &'g str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        let g = t.g;
        for w in g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !g.contains_key(w) {
                continue;
            }
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn modules_import_each_other_without_a_circle() {
    let graph = import_graph();
    assert!(graph.len() > 30, "too few modules read: {graph:?}");
    assert!(
        graph["local_backup"].contains("catalog"),
        "the reader misses imports: {graph:?}"
    );
    let found = circles(&graph);
    let mut report = String::new();
    for c in &found {
        report.push_str(&format!("circle of {} modules:\n", c.len()));
        for a in c {
            for b in &graph[a] {
                if c.contains(b) {
                    report.push_str(&format!("  {a} -> {b}\n"));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "the modules of src/ import each other in a circle; move the shared piece down \
         a layer (docs/architecture.md):\n{report}"
    );
}

#[test]
fn the_configuration_is_a_leaf() {
    let graph = import_graph();
    let above: Vec<&String> = graph["config"]
        .iter()
        .filter(|m| !CONFIG_MAY_USE.contains(&m.as_str()))
        .collect();
    assert!(
        above.is_empty(),
        "src/config/ imports {above:?}: the configuration owns every raw and validated \
         type and may use only {CONFIG_MAY_USE:?}"
    );
    for m in CONFIG_MAY_USE {
        assert!(
            !graph[*m].contains("config"),
            "{m} imports config, so config may not use it"
        );
    }
}

#[test]
fn the_circle_finder_finds_a_circle() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let edge = |g: &mut BTreeMap<String, BTreeSet<String>>, a: &str, b: &str| {
        g.entry(a.into()).or_default().insert(b.into());
        g.entry(b.into()).or_default();
    };
    edge(&mut g, "a", "b");
    edge(&mut g, "b", "c");
    edge(&mut g, "c", "d");
    assert!(circles(&g).is_empty());
    edge(&mut g, "d", "b");
    assert_eq!(circles(&g), vec![vec!["b", "c", "d"]]);
}

#[test]
fn the_engine_never_imports_a_command_and_no_command_imports_another() {
    let graph = import_graph();
    let cmds = commands();
    assert!(cmds.contains("backup") && cmds.contains("hook"), "{cmds:?}");
    let mut problems = Vec::new();
    for (m, deps) in &graph {
        for d in deps.iter().filter(|d| cmds.contains(*d)) {
            if cmds.contains(m) {
                problems.push(format!("the command {m} imports the command {d}"));
            } else if m != "cli" && m != "quiet" {
                problems.push(format!("{m} (engine) imports the command {d}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "move the shared piece down to the engine (docs/architecture.md):\n{}",
        problems.join("\n")
    );
}
