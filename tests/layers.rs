//! The layers of `src/`, and a check that every file imports only from its own layer or the
//! ones below it.
//!
//! A file's layer comes from its path (`src/media/codec/g722.rs` is `media::codec`), the
//! layer of what it uses from each `crate::` path it names, in `use` lines or inline. The
//! most specific module listed wins, so `media::codec` sits below the rest of `media`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The order of layers, bottom first. A module may use its own layer and those before it.
const LAYERS: &[&[&str]] = &[
    // Settings, metric names, the records everything else is about, and locking.
    &["config", "metrics", "model", "sync"],
    // Protocols and formats with no notion of a call: SIP, SDP, the codecs.
    &["sip", "sdp", "media::codec"],
    // One call's parts: its media, its agent socket, its records, its webhooks.
    &["media", "agent", "store", "webhook"],
    // The call itself: the engine that sets calls up and ends them.
    &["call"],
    // The API on top.
    &["http"],
    // Wiring, signals and shutdown.
    &["server"],
];

/// Files that only declare modules or start the program.
const ROOTS: &[&str] = &["lib.rs", "main.rs"];

/// The layer of a module path (`media::codec::g711`), by its most specific listed prefix.
fn layer_of(path: &str) -> Option<(usize, &'static str)> {
    let mut best: Option<(usize, &'static str)> = None;
    for (layer, modules) in LAYERS.iter().enumerate() {
        for &module in modules.iter() {
            let matches = path == module || path.starts_with(&format!("{module}::"));
            if matches && best.is_none_or(|(_, m)| module.len() > m.len()) {
                best = Some((layer, module));
            }
        }
    }
    best
}

/// The module path of a source file: `src/media/codec/g711.rs` → `media::codec::g711`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("file under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_string());
    }
    parts.join("::")
}

/// Skips whitespace and comments from `i`.
fn skip_space(text: &[u8], mut i: usize) -> usize {
    while i < text.len() && (text[i] as char).is_whitespace() {
        i += 1;
    }
    i
}

fn ident_at(text: &[u8], i: usize) -> Option<(String, usize)> {
    let start = i;
    let mut j = i;
    while j < text.len() && (text[j].is_ascii_alphanumeric() || text[j] == b'_') {
        j += 1;
    }
    (j > start).then(|| (String::from_utf8_lossy(&text[start..j]).into_owned(), j))
}

/// Reads a use tree at `i` (after `crate::`), pushing every path it names (joined with
/// `prefix`). Returns the index after the tree.
fn read_tree(text: &[u8], mut i: usize, prefix: &[String], out: &mut Vec<String>) -> usize {
    let mut path: Vec<String> = prefix.to_vec();
    loop {
        i = skip_space(text, i);
        if text.get(i) == Some(&b'{') {
            i += 1;
            loop {
                i = skip_space(text, i);
                if text.get(i) == Some(&b'}') {
                    return i + 1;
                }
                i = read_tree(text, i, &path, out);
                i = skip_space(text, i);
                match text.get(i) {
                    Some(b',') => i += 1,
                    Some(b'}') => return i + 1,
                    _ => return i,
                }
            }
        }
        match ident_at(text, i) {
            Some((ident, next)) => {
                path.push(ident);
                i = next;
            }
            // `*` or something unexpected: the path so far is what is used.
            None => break,
        }
        if text[i..].starts_with(b"::") {
            i += 2;
        } else {
            break;
        }
    }
    if path.len() > prefix.len() || !path.is_empty() {
        out.push(path.join("::"));
    }
    i
}

/// Every `crate::` path a source text names, with the 1-based line it starts on.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("crate::") {
        let start = from + at;
        from = start + "crate::".len();
        // `dialtone_crate::` or a `$crate::` in a macro are not ours.
        let before = bytes.get(start.wrapping_sub(1)).copied();
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$') {
            continue;
        }
        let line = text[..start].matches('\n').count() + 1;
        let mut paths = Vec::new();
        read_tree(bytes, from, &[], &mut paths);
        found.extend(paths.into_iter().map(|p| (line, p)));
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Everything in `src/` that reaches up a layer, as `file:line: module (layer) uses path (layer)`.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut problems = Vec::new();
    for file in files {
        let rel = file
            .strip_prefix(src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if ROOTS.contains(&rel.as_str()) {
            continue;
        }
        let module = module_of(src, &file);
        let Some((own, own_name)) = layer_of(&module) else {
            problems.push(format!(
                "{rel}: module {module} is in no layer: add it to LAYERS"
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("readable source");
        for (line, path) in crate_paths(&text) {
            match layer_of(&path) {
                Some((used, used_name)) if used > own => problems.push(format!(
                    "src/{rel}:{line}: {own_name} (layer {own}) uses crate::{path}, from {used_name} (layer {used}) above it"
                )),
                Some(_) => {}
                None => problems.push(format!(
                    "src/{rel}:{line}: crate::{path} is in no layer: add its module to LAYERS"
                )),
            }
        }
    }
    problems
}

#[test]
fn every_import_points_down_or_sideways() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let problems = violations(&src);
    assert!(
        problems.is_empty(),
        "imports that break the layer order (tests/layers.rs, LAYERS):\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_top_level_module_has_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let declared: BTreeSet<&str> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';'))
        .collect();
    assert!(!declared.is_empty(), "lib.rs declares modules");
    for module in declared {
        assert!(layer_of(module).is_some(), "{module} is in no layer");
    }
}

#[test]
fn the_reader_sees_grouped_and_inline_paths() {
    let text = "use crate::{model::Call, media::{codec::Codec, rtp}};\n\
                fn f() { crate::http::serve(); let _ = $crate::x; }\n\
                use crate::sdp::*;\n";
    let paths: Vec<String> = crate_paths(text).into_iter().map(|(_, p)| p).collect();
    assert_eq!(
        paths,
        [
            "model::Call",
            "media::codec::Codec",
            "media::rtp",
            "http::serve",
            "sdp"
        ]
    );
    assert_eq!(layer_of("media::codec::Codec").map(|l| l.0), Some(1));
    assert_eq!(layer_of("media::rtp").map(|l| l.0), Some(2));
    assert_eq!(layer_of("mediation"), None);
}
