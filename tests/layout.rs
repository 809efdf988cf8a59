//! The source layout keeps its promises (docs/architecture.md): no two modules import each
//! other in a circle, and no source file grows past what a reader can hold.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Longest source file, in lines.
const MAX_LINES: usize = 1100;

/// Every `.rs` file under `src`, by module path (`gateway/pool`, `chain` for `chain/mod.rs`).
fn modules() -> BTreeMap<Vec<String>, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &mut files);
    let mut out = BTreeMap::new();
    for p in files {
        let rel = p.strip_prefix(&root).unwrap().with_extension("");
        let mut path: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if path.last().is_some_and(|l| l == "mod") {
            path.pop();
        }
        if path == ["lib"] || path == ["main"] {
            continue;
        }
        out.insert(path, p);
    }
    out
}

/// The code of a file without comments and without its test module.
fn code(p: &Path) -> String {
    let text = std::fs::read_to_string(p).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module paths a file refers to with `crate::a::b` or `super::a`.
fn references(module: &[String], code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let word = |i: usize| {
        let rest = &code[i..];
        let end = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        rest[..end].to_string()
    };
    for (i, _) in code.match_indices("crate::") {
        if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_') {
            continue;
        }
        let path = word(i + "crate::".len());
        out.push(
            path.split("::")
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        );
    }
    for (i, _) in code.match_indices("super::") {
        if i > 0
            && (bytes[i - 1].is_ascii_alphanumeric()
                || bytes[i - 1] == b'_'
                || bytes[i - 1] == b':')
        {
            continue;
        }
        let path = word(i);
        let parts: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        let ups = parts.iter().take_while(|p| **p == "super").count();
        let mut base: Vec<String> = module[..module.len().saturating_sub(ups)].to_vec();
        base.extend(parts[ups..].iter().map(|s| s.to_string()));
        out.push(base);
    }
    out
}

type Graph = BTreeMap<Vec<String>, BTreeSet<Vec<String>>>;

/// A circle of imports, if there is one.
fn find_cycle(edges: &Graph) -> Option<Vec<String>> {
    fn visit(
        v: &Vec<String>,
        edges: &Graph,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<String>> {
        state.insert(v.clone(), 1);
        stack.push(v.clone());
        for w in edges.get(v).into_iter().flatten() {
            match state.get(w) {
                Some(1) => {
                    let from = stack.iter().position(|s| s == w).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        stack[from..].iter().map(|s| s.join("/")).collect();
                    cycle.push(w.join("/"));
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(w, edges, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(v.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for v in edges.keys() {
        if !state.contains_key(v) {
            if let Some(c) = visit(v, edges, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn no_module_imports_another_in_a_circle() {
    let mods = modules();
    let resolve = |path: &[String]| -> Option<Vec<String>> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|p| mods.contains_key(p))
    };
    let mut edges = Graph::new();
    for (m, p) in &mods {
        let targets = edges.entry(m.clone()).or_default();
        for r in references(m, &code(p)) {
            let Some(t) = resolve(&r) else { continue };
            // A module may use its own children and its parents' items.
            if t != *m && !t.starts_with(m) && !m.starts_with(&t) {
                targets.insert(t);
            }
        }
    }
    if let Some(cycle) = find_cycle(&edges) {
        panic!(
            "modules import each other in a circle: {}",
            cycle.join(" -> ")
        );
    }
    // The check sees the layers it is meant to guard.
    let gateway = &edges[&vec!["gateway".to_string(), "router".to_string()]];
    assert!(gateway.contains(&vec!["gateway".to_string(), "pool".to_string()]));
    assert!(edges[&vec!["verify".to_string(), "tracker".to_string()]]
        .contains(&vec!["chain".to_string()]));
}

#[test]
fn no_source_file_is_too_long_to_read() {
    let long: Vec<String> = modules()
        .values()
        .filter_map(|p| {
            let n = std::fs::read_to_string(p).unwrap().lines().count();
            (n > MAX_LINES).then(|| format!("{} ({n} lines)", p.display()))
        })
        .collect();
    assert!(long.is_empty(), "split these files: {long:?}");
}

#[test]
fn references_and_circles_are_found() {
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let a = references(&v(&["x", "a"]), "use super::b::Thing;");
    assert_eq!(a, vec![v(&["x", "b"])]);
    let c = references(&v(&["x"]), "let v = crate::y::z::f();");
    assert_eq!(c, vec![v(&["y", "z", "f"])]);
    let mut g = Graph::new();
    g.entry(v(&["a"])).or_default().insert(v(&["b"]));
    g.entry(v(&["b"])).or_default().insert(v(&["c"]));
    assert_eq!(find_cycle(&g), None);
    g.entry(v(&["c"])).or_default().insert(v(&["a"]));
    assert_eq!(find_cycle(&g), Some(v(&["a", "b", "c", "a"])));
}
