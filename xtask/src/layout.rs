//! `cargo xtask test`'s layout check (ARCHITECTURE.md's rules, made executable): the modules
//! of `lb-userspace` form no import cycle, `master` and `cell` never import each other, the
//! modules they share import neither, and no source file in the workspace passes 600 lines.
//!
//! The module graph is read from the source text: every `use` tree and every inline path that
//! starts with `crate::`, `super::`, `self::` or the name of a child module gives an edge to
//! the longest module prefix of that path (parent -> child `mod` declarations are not edges).
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// Longest source file, in lines.
const MAX_LINES: usize = 600;

/// Modules `master` and `cell` share; none of them may import either role.
const SHARED: &[&str] = &[
    "config",
    "metrics",
    "proto",
    "sys",
    "ebpf",
    "privilege",
    "tls",
];

pub fn check(root: &Path) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    let src = root.join("lb-userspace/src");
    let modules = read_modules(&src)?;
    let (graph, via) = edges(&modules);
    for members in cycles(&graph) {
        let inside: Vec<String> = via
            .iter()
            .filter(|((f, t), _)| members.contains(f) && members.contains(t))
            .map(|((f, t), path)| format!("{f} -> {t} ({path})"))
            .collect();
        problems.push(format!(
            "import cycle among {}:\n    {}",
            members.join(", "),
            inside.join("\n    ")
        ));
    }
    for (from, tos) in &graph {
        for to in tos {
            if let Some(why) = forbidden(from, to) {
                problems.push(format!("{from} imports {to}: {why}"));
            }
        }
    }
    for file in rust_files(root)? {
        let lines = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?
            .lines()
            .count();
        if lines > MAX_LINES {
            problems.push(format!(
                "{} has {lines} lines (at most {MAX_LINES}: split it by job)",
                file.strip_prefix(root).unwrap_or(&file).display()
            ));
        }
    }
    if !problems.is_empty() {
        bail!("layout check failed:\n  {}", problems.join("\n  "));
    }
    eprintln!(
        "xtask: layout ok ({} modules in lb-userspace, no cycle, roles kept apart)",
        modules.len()
    );
    Ok(())
}

/// Why `from` may not import `to`, if it may not.
fn forbidden(from: &str, to: &str) -> Option<&'static str> {
    let top = |m: &str| m.split("::").next().unwrap_or_default().to_string();
    let (f, t) = (top(from), top(to));
    match (f.as_str(), t.as_str()) {
        ("master", "cell") | ("cell", "master") => {
            Some("master and cell meet only through proto (and what both use)")
        }
        (f, "master" | "cell") if SHARED.contains(&f) => {
            Some("shared modules import neither process role")
        }
        _ => None,
    }
}

/// Every `.rs` file of the workspace's crates (build output and virtualenvs left out).
fn rust_files(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = [
        "lb-common",
        "lb-ebpf",
        "lb-userspace",
        "wsgi-worker",
        "xtask",
        "tests",
        "fuzz",
    ]
    .iter()
    .map(|c| root.join(c))
    .collect();
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "target") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Module path (`cell::static_files::cache`; the crate root is "") -> its source text.
fn read_modules(src: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).context("module under src")?;
            if rel == Path::new("main.rs") {
                // The binary: a crate of its own over the library's public items (`lib.rs`
                // is the crate root of the module graph).
                continue;
            }
            let mut parts: Vec<String> = rel
                .iter()
                .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                parts.pop();
            }
            let mut text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            // Inline test modules (last in a file, by convention) are not part of the graph:
            // their `super` is the file itself.
            if let Some(i) = text.find("#[cfg(test)]\nmod tests {") {
                text.truncate(i);
            }
            out.insert(parts.join("::"), text);
        }
    }
    Ok(out)
}

/// (from, to) -> the first path that makes the edge.
type Via = BTreeMap<(String, String), String>;

/// Import edges between modules (self-edges dropped), and a path that makes each.
fn edges(modules: &BTreeMap<String, String>) -> (BTreeMap<String, BTreeSet<String>>, Via) {
    let known: BTreeSet<&str> = modules.keys().map(String::as_str).collect();
    let mut graph = BTreeMap::new();
    let mut via = Via::new();
    for (module, text) in modules {
        let here: Vec<&str> = module.split("::").filter(|s| !s.is_empty()).collect();
        let children: BTreeSet<String> = known
            .iter()
            .filter_map(|k| {
                let rest = if module.is_empty() {
                    *k
                } else {
                    k.strip_prefix(module.as_str())?.strip_prefix("::")?
                };
                (!rest.is_empty() && !rest.contains("::")).then(|| rest.to_string())
            })
            .collect();
        let mut tos = BTreeSet::new();
        for path in paths(&strip_comments(text)) {
            let segs: Vec<&str> = path.split("::").collect();
            let absolute: Vec<String> = match segs[0] {
                "crate" => segs[1..].iter().map(|s| (*s).to_string()).collect(),
                "self" => here
                    .iter()
                    .chain(&segs[1..])
                    .map(|s| (*s).to_string())
                    .collect(),
                "super" => {
                    let ups = segs.iter().take_while(|s| **s == "super").count();
                    let base = &here[..here.len().saturating_sub(ups)];
                    base.iter()
                        .chain(&segs[ups..])
                        .map(|s| (*s).to_string())
                        .collect()
                }
                first if children.contains(first) => {
                    here.iter().chain(&segs).map(|s| (*s).to_string()).collect()
                }
                _ => continue,
            };
            // The longest prefix that is a module.
            let target = (0..=absolute.len())
                .rev()
                .map(|n| absolute[..n].join("::"))
                .find(|m| known.contains(m.as_str()));
            if let Some(t) = target
                && t != *module
                && !t.is_empty()
            {
                via.entry((module.clone(), t.clone())).or_insert(path);
                tos.insert(t);
            }
        }
        graph.insert(module.clone(), tos);
    }
    (graph, via)
}

/// Source text without comments (doc comments name modules without importing them).
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path in `use` trees (expanded) and inline `a::b::c` paths of the text.
fn paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = find_use(rest) {
        let after = &rest[i + 4..];
        let end = after.find(';').unwrap_or(after.len());
        expand("", after[..end].trim(), &mut out);
        rest = &after[end..];
    }
    // Inline paths: identifiers joined by `::`.
    let bytes = text.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        if ident(bytes[i]) && (i == 0 || !(ident(bytes[i - 1]) || bytes[i - 1] == b':')) {
            let start = i;
            let mut j = i;
            loop {
                while j < bytes.len() && ident(bytes[j]) {
                    j += 1;
                }
                if text[j..].starts_with("::") && bytes.get(j + 2).is_some_and(|b| ident(*b)) {
                    j += 2;
                } else {
                    break;
                }
            }
            if text[start..j].contains("::") {
                out.push(text[start..j].to_string());
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

/// The next `use ` keyword at a statement start.
fn find_use(text: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = text[from..].find("use ") {
        let at = from + i;
        let before = text[..at].trim_end_matches([' ', '\t']);
        if before.is_empty()
            || before.ends_with(['\n', ';', '{', '}'])
            || before.ends_with("pub")
            || before.ends_with(')')
        {
            return Some(at);
        }
        from = at + 4;
    }
    None
}

/// Expands a use tree (`a::{b, c::{d, e}}`) into full paths.
fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if tree.is_empty() {
        return;
    }
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim().trim_end_matches("::");
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let prefix = join(prefix, head);
        for part in split_top(inner) {
            expand(&prefix, part, out);
        }
    } else {
        let path = tree.split(" as ").next().unwrap_or(tree).trim();
        if path != "self" && path != "*" {
            out.push(join(prefix, path.trim_end_matches("::*")));
        } else {
            out.push(prefix.to_string());
        }
    }
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}::{b}"),
    }
}

/// Splits on commas outside braces.
fn split_top(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// The modules of each strongly connected component of more than one module (Tarjan), sorted:
/// every module in one imports, through the others, itself.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.out.push(component);
                }
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(files: &[(&str, &str)]) -> BTreeMap<String, BTreeSet<String>> {
        let modules = files
            .iter()
            .map(|(m, t)| ((*m).to_string(), (*t).to_string()))
            .collect();
        edges(&modules).0
    }

    #[test]
    fn use_trees_expand() {
        let mut out = Vec::new();
        expand(
            "",
            "crate::cell::{body::{Body, status_page}, conn, self}",
            &mut out,
        );
        assert_eq!(
            out,
            [
                "crate::cell::body::Body",
                "crate::cell::body::status_page",
                "crate::cell::conn",
                "crate::cell"
            ]
        );
    }

    #[test]
    fn edges_follow_crate_super_and_child_paths() {
        let g = graph(&[
            ("", "mod cell;"),
            (
                "cell",
                "mod conn; use conn::serve; fn f() { crate::proto::READY; }",
            ),
            (
                "cell::conn",
                "use super::super::proto::Recycle; // crate::master::x\n",
            ),
            ("proto", ""),
            ("master", "use crate::cell::conn::X;"),
        ]);
        assert_eq!(
            g["cell"],
            BTreeSet::from(["cell::conn".to_string(), "proto".to_string()])
        );
        assert_eq!(g["cell::conn"], BTreeSet::from(["proto".to_string()]));
        assert_eq!(
            forbidden("master", "cell::conn"),
            Some("master and cell meet only through proto (and what both use)")
        );
        assert!(forbidden("metrics", "master::state").is_some());
        assert_eq!(forbidden("cell::wsgi", "metrics"), None);
    }

    #[test]
    fn cycles_are_found() {
        let g = graph(&[
            ("a", "use crate::b::X;"),
            ("b", "use crate::c::Y;"),
            ("c", "fn f() { crate::a::z(); }"),
            ("d", "use crate::a::X;"),
        ]);
        assert_eq!(cycles(&g), vec![vec!["a", "b", "c"]]);
        let g = graph(&[("a", "use crate::b::X;"), ("b", "")]);
        assert!(cycles(&g).is_empty());
    }
}
