//! The runtime's source keeps the shape ARCHITECTURE.md describes: its top-level modules form one-way
//! layers (every `crate::` path a module names points to its own layer or one below, and the graph
//! has no cycle), no struct exposes more than 10 `pub(crate)` fields, and no file has more than 450
//! code lines (comments and blank lines not counted).
//!
//! The checks read `runtime/src` as text: a `crate::x` path (or `$crate::x` in a macro, or a name the
//! crate root re-exports from module `x`) outside comments is an edge to `x`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The layers, bottom up, as ARCHITECTURE.md lists them. A module may use modules of its own layer
/// (without cycles) and of the layers below.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "leaves",
        &[
            "atomics",
            "counter",
            "fdmon",
            "notifier",
            "pool",
            "sys",
            "thread_id",
            "timers",
        ],
    ),
    ("loop", &["context"]),
    ("executor", &["task"]),
    ("futures", &["io", "fs", "net", "signal", "sync", "time"]),
    ("threads", &["gsource", "iothread", "main_loop"]),
];

/// Test-only modules that drive the others (the loom models).
const TEST_ONLY: &[&str] = &["loom_models"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime/src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("runtime/src is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file: every line with its `//` comment (doc comments included) cut off.
fn code_lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(|line| match line.find("//") {
            // A `//` inside a string literal would be cut too; the runtime has none before code.
            Some(at) => &line[..at],
            None => line,
        })
        .collect()
}

/// The top-level module a file belongs to (`lib` for lib.rs).
fn top_module(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("a path");
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_owned()
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The first path segments after each `crate::` in `code`: `crate::x::y` gives `x`, and
/// `crate::{a, b::c}` gives `a` and `b`.
fn crate_paths(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| is_ident(c) && c != '$') {
            continue; // e.g. `mycrate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item.trim().chars().take_while(|&c| is_ident(c)).collect();
                if !name.is_empty() {
                    found.push(name);
                }
            }
        } else {
            let name: String = rest.chars().take_while(|&c| is_ident(c)).collect();
            if !name.is_empty() {
                found.push(name);
            }
        }
    }
    found
}

/// Names the crate root re-exports, and the module each comes from (`pub use context::{A, B}`).
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let code = code_lines(lib).join("\n");
    let mut map = BTreeMap::new();
    for stmt in code.split(';') {
        let Some(at) = stmt.find("pub use ") else {
            continue;
        };
        let path = stmt[at + "pub use ".len()..].trim();
        let Some((module, items)) = path.split_once("::") else {
            continue;
        };
        let items = items.trim().trim_start_matches('{').trim_end_matches('}');
        for item in items.split(',') {
            let name = item.rsplit("::").next().unwrap_or("").trim();
            if !name.is_empty() {
                map.insert(name.to_owned(), module.trim().to_owned());
            }
        }
    }
    map
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

/// Edges of the top-level module graph: module -> modules it names.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = src();
    let lib = fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    let reexports = root_reexports(&lib);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let module = top_module(&src, &file);
        if module == "lib" || TEST_ONLY.contains(&module.as_str()) {
            continue;
        }
        let text = fs::read_to_string(&file).expect("a source file");
        let targets = graph.entry(module.clone()).or_default();
        for line in code_lines(&text) {
            for name in crate_paths(line) {
                let target = if layer_of(&name).is_some() {
                    name
                } else if let Some(module) = reexports.get(&name) {
                    module.clone()
                } else {
                    continue; // a macro or a re-exported external crate
                };
                if target != module {
                    targets.insert(target);
                }
            }
        }
    }
    graph
}

#[test]
fn every_top_level_module_has_a_layer() {
    let graph = module_graph();
    for module in graph.keys() {
        assert!(
            layer_of(module).is_some(),
            "runtime/src/{module} is in no layer: add it to LAYERS here and to ARCHITECTURE.md"
        );
    }
}

#[test]
fn modules_use_only_their_own_layer_and_the_layers_below() {
    let graph = module_graph();
    let mut upward = Vec::new();
    for (module, targets) in &graph {
        let Some(own) = layer_of(module) else {
            continue;
        };
        for target in targets {
            if layer_of(target).is_some_and(|layer| layer > own) {
                upward.push(format!(
                    "{module} ({}) -> {target} ({})",
                    LAYERS[own].0,
                    LAYERS[layer_of(target).unwrap_or(own)].0
                ));
            }
        }
    }
    assert!(upward.is_empty(), "edges up the layers: {upward:#?}");
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = module_graph();
    // Kahn's algorithm: repeatedly remove modules nothing left points to... from the bottom: a module
    // all of whose targets are removed goes next.
    let mut left: BTreeMap<&str, BTreeSet<&str>> = graph
        .iter()
        .map(|(m, t)| (m.as_str(), t.iter().map(String::as_str).collect()))
        .collect();
    loop {
        let ready: Vec<&str> = left
            .iter()
            .filter(|(_, targets)| targets.iter().all(|t| !left.contains_key(t)))
            .map(|(m, _)| *m)
            .collect();
        if ready.is_empty() {
            break;
        }
        for m in ready {
            left.remove(m);
        }
    }
    assert!(left.is_empty(), "modules in a cycle: {left:#?}");
}

#[test]
fn no_struct_exposes_more_than_10_crate_fields() {
    let src = src();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut too_open = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).expect("a source file");
        let lines = code_lines(&text);
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i].trim();
            let is_struct = (line.starts_with("struct ") || line.contains(" struct "))
                && line.ends_with('{')
                && !line.contains('(');
            if !is_struct {
                i += 1;
                continue;
            }
            let name = line.split("struct ").nth(1).unwrap_or(line).to_owned();
            let mut depth = 1;
            let mut fields = 0;
            i += 1;
            while i < lines.len() && depth > 0 {
                let body = lines[i].trim();
                if depth == 1 && body.starts_with("pub(crate) ") && body.contains(':') {
                    fields += 1;
                }
                depth += body.matches('{').count();
                depth -= body.matches('}').count();
                i += 1;
            }
            if fields > 10 {
                too_open.push(format!("{}: struct {name} has {fields}", file.display()));
            }
        }
    }
    assert!(
        too_open.is_empty(),
        "structs with more than 10 pub(crate) fields: {too_open:#?}"
    );
}

#[test]
fn no_file_has_more_than_450_code_lines() {
    let src = src();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut long = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).expect("a source file");
        let code = code_lines(&text)
            .into_iter()
            .filter(|l| !l.trim().is_empty())
            .count();
        if code > 450 {
            long.push(format!("{}: {code} code lines", file.display()));
        }
    }
    assert!(long.is_empty(), "files over 450 code lines: {long:#?}");
}

#[test]
fn the_checks_see_what_they_check() {
    // The scanner itself: a grouped import, a macro path, and a comment that must not count.
    assert_eq!(
        crate_paths("use crate::{sys, fdmon::Interest, EventNotifier};"),
        ["sys", "fdmon", "EventNotifier"]
    );
    assert_eq!(crate_paths("$crate::io::Async::new(x)"), ["io"]);
    assert_eq!(code_lines("let a = 1; // crate::task"), ["let a = 1; "]);
    let graph = module_graph();
    assert!(
        graph["task"].contains("context"),
        "the executor uses the loop: {graph:#?}"
    );
    assert!(
        graph["context"].contains("fdmon"),
        "the loop uses the fd monitors: {graph:#?}"
    );
    assert_eq!(
        root_reexports("pub use context::{AioContext, Bh};\npub use fdmon::Backend;")["Backend"],
        "fdmon"
    );
}
