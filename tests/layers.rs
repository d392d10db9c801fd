//! The layers of `src/`, checked from the source text: no two files import
//! each other, directly or around a circle, and each layer imports only the
//! layers below it (README "Layout", src/lib.rs).
//!
//! Owns nothing but this check; it reads files and never builds or runs code.
//! An edge is any `crate::`/`super::`/`self::` path outside `#[cfg(test)]`
//! code, resolved to the file that defines the longest matching module.
//! `mod` declarations and `pub use` re-exports are the module tree, not
//! dependencies, and are left out.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`["supervisor", "arbiter"]`) of every file under src/ that
/// belongs to the library (src/bin/ holds the binaries, outside the layers).
fn modules(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    let mut map = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src).unwrap();
        if rel.starts_with("bin") {
            continue;
        }
        let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
        let last = parts.pop().unwrap();
        match last.as_str() {
            "lib.rs" | "mod.rs" => {}
            name => parts.push(name.trim_end_matches(".rs").to_string()),
        }
        map.insert(parts, f);
    }
    map
}

/// The source without comments, string literals and `#[cfg(test)]` items.
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            // Skip the item that follows: to the end of its braces.
            let mut depth = 0i32;
            let mut opened = false;
            for l in lines.by_ref() {
                depth += l.matches('{').count() as i32 - l.matches('}').count() as i32;
                opened |= l.contains('{');
                if opened && depth <= 0 || !opened && l.trim_end().ends_with(';') {
                    break;
                }
            }
            continue;
        }
        if t.starts_with("//") {
            continue;
        }
        // Drop string literals (paths in messages are not imports).
        let mut in_str = false;
        let mut prev = ' ';
        for c in line.chars() {
            if c == '"' && prev != '\\' {
                in_str = !in_str;
            } else if !in_str {
                out.push(c);
            }
            prev = if prev == '\\' && c == '\\' { ' ' } else { c };
        }
        out.push('\n');
    }
    out
}

/// Path segments after each `crate::`, `super::` or `self::` in `code`,
/// made absolute for the module `me`. Braced groups (`use a::{b, c::d}`)
/// give one path per member.
fn references(code: &str, me: &[String]) -> Vec<Vec<String>> {
    // Statements that are the module tree, not dependencies.
    let code: String = {
        let mut kept = String::new();
        for stmt in code.split_inclusive(';') {
            let s = stmt.trim_start();
            let s = s.strip_prefix("pub(crate) ").or_else(|| s.strip_prefix("pub ")).unwrap_or(s);
            let tree = stmt.trim_start().starts_with("pub use ") || stmt.trim_start().starts_with("pub(crate) use ");
            if tree || s.starts_with("mod ") {
                continue;
            }
            kept.push_str(stmt);
        }
        kept
    };
    let bytes: Vec<char> = code.chars().collect();
    let mut refs = Vec::new();
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut i = 0;
    while i < bytes.len() {
        let starts = |w: &str| bytes[i..].iter().take(w.len()).copied().eq(w.chars());
        let boundary = i == 0 || !is_ident(bytes[i - 1]) && bytes[i - 1] != ':';
        if boundary && (starts("crate::") || starts("super::") || starts("self::")) {
            // The base module.
            let mut base: Vec<String> = Vec::new();
            let mut j = i;
            if starts("crate::") {
                j += 7;
            } else {
                // A file's module path names the file itself (a mod.rs: its
                // folder), so each `super` drops one segment.
                base = me.to_vec();
                while bytes[j..].iter().take(7).copied().eq("super::".chars()) {
                    base.pop();
                    j += 7;
                }
                if bytes[j..].iter().take(6).copied().eq("self::".chars()) {
                    j += 6;
                }
            }
            for tail in expand(&bytes, &mut j) {
                let mut p = base.clone();
                p.extend(tail);
                refs.push(p);
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    refs
}

/// Reads a path tail at `*j` (`a::b::C`, or `a::{b, c::D}`), advancing `*j`.
fn expand(s: &[char], j: &mut usize) -> Vec<Vec<String>> {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut prefix = Vec::new();
    loop {
        let start = *j;
        while *j < s.len() && is_ident(s[*j]) {
            *j += 1;
        }
        if *j > start {
            prefix.push(s[start..*j].iter().collect::<String>());
        }
        if *j + 1 < s.len() && s[*j] == ':' && s[*j + 1] == ':' {
            *j += 2;
            if *j < s.len() && s[*j] == '{' {
                *j += 1;
                let mut out = Vec::new();
                loop {
                    while *j < s.len() && (s[*j].is_whitespace() || s[*j] == ',') {
                        *j += 1;
                    }
                    if *j >= s.len() || s[*j] == '}' {
                        *j += 1;
                        break;
                    }
                    let before = *j;
                    for tail in expand(s, j) {
                        let mut p = prefix.clone();
                        p.extend(tail);
                        out.push(p);
                    }
                    // `as name` and other trailing words inside the group.
                    while *j < s.len() && s[*j] != ',' && s[*j] != '}' {
                        *j += 1;
                    }
                    if *j == before {
                        *j += 1;
                    }
                }
                return out;
            }
            continue;
        }
        return vec![prefix];
    }
}

/// The file-level import graph: file module -> file modules it uses.
fn graph(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mods = modules(src);
    let mut g: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (me, file) in &mods {
        let text = std::fs::read_to_string(file).unwrap();
        let edges = g.entry(me.clone()).or_default();
        for r in references(&code_of(&text), me) {
            // The longest module prefix of the path that is a file.
            let target = (0..=r.len()).rev().map(|n| r[..n].to_vec()).find(|p| mods.contains_key(p));
            if let Some(t) = target {
                if &t != me && !t.is_empty() {
                    edges.insert(t);
                }
            }
        }
    }
    g
}

fn name(m: &[String]) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// Every strongly connected component with more than one file.
fn cycles(g: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<String>> {
    // Tarjan's algorithm, recursive: the graph has a few dozen nodes.
    struct T<'a> {
        g: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on: BTreeSet<&'a Vec<String>>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    impl<'a> T<'a> {
        fn visit(&mut self, v: &'a Vec<String>) {
            self.index.insert(v, self.next);
            self.low.insert(v, self.next);
            self.next += 1;
            self.stack.push(v);
            self.on.insert(v);
            if let Some(ws) = self.g.get(v) {
                for w in ws {
                    let Some((w, _)) = self.g.get_key_value(w) else { continue };
                    if !self.index.contains_key(w) {
                        self.visit(w);
                        let l = self.low[w].min(self.low[v]);
                        self.low.insert(v, l);
                    } else if self.on.contains(w) {
                        let l = self.index[w].min(self.low[v]);
                        self.low.insert(v, l);
                    }
                }
            }
            if self.low[v] == self.index[v] {
                let mut comp = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on.remove(w);
                    comp.push(name(w));
                    if w == v {
                        break;
                    }
                }
                if comp.len() > 1 {
                    comp.sort();
                    self.out.push(comp);
                }
            }
        }
    }
    let mut t = T { g, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), on: BTreeSet::new(), next: 0, out: Vec::new() };
    for v in g.keys() {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn no_two_files_import_each_other_directly_or_around_a_circle() {
    let g = graph(&src());
    let found = cycles(&g);
    let detail: Vec<String> = found
        .iter()
        .map(|c| {
            let edges: Vec<String> = g
                .iter()
                .filter(|(from, _)| c.contains(&name(from)))
                .flat_map(|(from, to)| {
                    to.iter().filter(|t| c.contains(&name(t))).map(move |t| format!("{} -> {}", name(from), name(t)))
                })
                .collect();
            format!("{}:\n    {}", c.join(", "), edges.join("\n    "))
        })
        .collect();
    assert!(found.is_empty(), "import circles:\n  {}", detail.join("\n  "));
}

/// Which top-level layers each layer may import. The binaries (src/bin/)
/// may use anything.
#[test]
fn layers_import_only_the_layers_below_them() {
    let allowed: &[(&str, &[&str])] = &[
        ("protocol", &["log"]),
        ("log", &[]),
        ("engine", &["protocol", "log"]),
        ("worker", &["engine", "protocol", "log"]),
        ("config", &["protocol", "log", "runtime_dir"]),
        ("supervisor", &["protocol", "config", "log", "runtime_dir"]),
        ("frontend", &["supervisor", "protocol", "config", "log", "runtime_dir"]),
        ("client", &["protocol", "log", "runtime_dir"]),
        ("runtime_dir", &["log"]),
    ];
    let g = graph(&src());
    let mut bad = Vec::new();
    for (from, to) in &g {
        let (Some(fl), true) = (from.first(), true) else { continue };
        let Some((_, ok)) = allowed.iter().find(|(l, _)| l == fl) else {
            // A new top-level module must be given its place in the table.
            bad.push(format!("{} is not in the layer table", name(from)));
            continue;
        };
        for t in to {
            let Some(tl) = t.first() else { continue };
            if tl != fl && !ok.contains(&tl.as_str()) {
                bad.push(format!("{} -> {}", name(from), name(t)));
            }
        }
    }
    assert!(bad.is_empty(), "imports against the layers:\n  {}", bad.join("\n  "));
}

/// The check itself finds a circle and a layer violation in known text, so
/// the tests above cannot pass by finding nothing.
#[test]
fn the_reader_sees_use_lines_braces_and_super() {
    let me: Vec<String> = vec!["supervisor".into(), "conn".into()];
    let code = code_of(
        "use super::arbiter::{Event, Query};\nuse crate::protocol::{self, frame::Frame};\n\
         // use crate::engine::Nope;\nlet s = \"crate::client::x\";\n#[cfg(test)]\nmod tests {\n use crate::worker::X;\n}\n\
         fn f() { crate::log::line(\"x\"); }\n",
    );
    let refs = references(&code, &me);
    let names: Vec<String> = refs.iter().map(|r| name(r)).collect();
    assert!(names.contains(&"supervisor::arbiter::Event".to_string()), "{names:?}");
    assert!(names.contains(&"supervisor::arbiter::Query".to_string()), "{names:?}");
    assert!(names.contains(&"protocol::frame::Frame".to_string()), "{names:?}");
    assert!(names.contains(&"log::line".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("engine") || n.starts_with("client") || n.starts_with("worker")), "{names:?}");
    let a = vec!["a".to_string()];
    let b = vec!["b".to_string()];
    let g: BTreeMap<_, _> = [(a.clone(), BTreeSet::from([b.clone()])), (b, BTreeSet::from([a]))].into_iter().collect();
    assert_eq!(cycles(&g), vec![vec!["a".to_string(), "b".to_string()]]);
}
