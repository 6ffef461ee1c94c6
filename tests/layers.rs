//! The layout's rules, checked on the source (`src/lib.rs` names the layers):
//!
//! 1. Dependencies point down only. Each folder of `src/` is a layer and may use only the
//!    layers below it ([`ALLOWED`]); a path into a layer above (in a `use`, or written out in
//!    code) fails this test with the file, the line and the path.
//! 2. No function in `src/` is longer than [`MAX_FN_LINES`] lines unless a `// Long: <reason>`
//!    comment stands right above it (among its doc comments and attributes).
//!
//! The source is parsed with `syn`, so grouped imports (`use crate::{a, b::c}`) and `super::`
//! paths are seen as the compiler sees them. Paths inside macro invocations are not (a macro's
//! input is tokens until it is expanded).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// The layers from the bottom, and what each may use besides itself.
const ALLOWED: &[(&str, &[&str])] = &[
    ("model", &[]),
    ("runtime", &["model"]),
    ("provider", &["model", "runtime"]),
    ("rotation", &["model", "runtime", "provider"]),
    ("controller", &["model", "runtime", "provider", "rotation"]),
    // The REST API reaches the controller only through `rotation::rotate` and the model.
    ("api", &["model", "runtime", "rotation"]),
    ("plugin", &["model"]),
];

/// Longer than this, a function needs a reason written next to it.
const MAX_FN_LINES: usize = 80;

/// A rule broken, where.
#[derive(Debug, PartialEq, Eq)]
struct Finding {
    file: String,
    line: usize,
    what: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.what)
    }
}

/// The module path of a file under `src/` (`runtime/cached.rs` → `["runtime", "cached"]`); empty
/// for a crate root other than the library's (`main.rs`, `bin/*`): those are in no layer (their
/// `crate::` is their own), and only their functions' lengths are checked.
fn module_of(rel: &Path) -> Vec<String> {
    let parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.first().is_some_and(|p| p == "bin") || parts == ["main.rs"] {
        return Vec::new();
    }
    let mut module: Vec<String> = parts
        .iter()
        .map(|p| p.trim_end_matches(".rs").to_string())
        .collect();
    if module.last().is_some_and(|m| m == "mod" || m == "lib") {
        module.pop();
    }
    module
}

struct Checker<'a> {
    file: &'a str,
    source: &'a [&'a str],
    /// The module the visitor is in (the file's, then any inline `mod` inside it).
    module: Vec<String>,
    findings: Vec<Finding>,
}

impl Checker<'_> {
    fn layer(&self) -> Option<&str> {
        self.module.first().map(String::as_str)
    }

    /// `segments` as an absolute path (`crate::…`, `super::…`), if it is one.
    fn absolute(&self, segments: &[String]) -> Option<Vec<String>> {
        match segments.first().map(String::as_str) {
            Some("crate") => Some(segments[1..].to_vec()),
            Some("super") => {
                let mut base = self.module.clone();
                let mut rest = segments;
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
                base.extend(rest.iter().cloned());
                Some(base)
            }
            _ => None,
        }
    }

    fn check_path(&mut self, segments: &[String], line: usize) {
        let (Some(from), Some(target)) = (self.layer(), self.absolute(segments)) else {
            return;
        };
        let Some(to) = target.first() else { return };
        if to == from {
            return;
        }
        let allowed = ALLOWED
            .iter()
            .find(|(layer, _)| *layer == from)
            .is_some_and(|(_, below)| below.contains(&to.as_str()));
        // A path to the crate root's own items (none today) or to a name that is no layer
        // (a macro's `crate::` inside a layer) is not a dependency between layers.
        let is_layer = ALLOWED.iter().any(|(layer, _)| layer == to);
        if !allowed && is_layer {
            self.findings.push(Finding {
                file: self.file.to_string(),
                line,
                what: format!(
                    "`{}` uses `{}`, a layer it may not use",
                    from,
                    segments.join("::")
                ),
            });
        }
    }

    fn check_fn(&mut self, name: &str, attrs: &[syn::Attribute], first: usize, last: usize) {
        let lines = last + 1 - first;
        if lines <= MAX_FN_LINES {
            return;
        }
        // The comment lines and attributes right above the signature (attributes come first in
        // the item's span, so start above the first of them).
        let start = attrs
            .iter()
            .map(|a| span_line(a.pound_token.span))
            .min()
            .unwrap_or(first)
            .min(first);
        let reasoned = (1..start)
            .rev()
            .map(|l| self.source[l - 1].trim())
            .take_while(|l| l.starts_with("//") || l.starts_with("#["))
            .chain((start..first).map(|l| self.source[l - 1].trim()))
            .any(|l| l.starts_with("// Long:"));
        if !reasoned {
            self.findings.push(Finding {
                file: self.file.to_string(),
                line: first,
                what: format!(
                    "fn `{name}` is {lines} lines (over {MAX_FN_LINES}) with no `// Long: <reason>` above it"
                ),
            });
        }
    }
}

fn span_line(span: proc_macro2::Span) -> usize {
    span.start().line
}

/// Every path a `use` tree names, each as its segments (`use a::{b, c::d}` → `a::b`, `a::c::d`).
fn use_paths(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            use_paths(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let mut path = prefix.clone();
            if n.ident != "self" {
                path.push(n.ident.to_string());
            }
            out.push(path);
        }
        syn::UseTree::Rename(r) => {
            let mut path = prefix.clone();
            path.push(r.ident.to_string());
            out.push(path);
        }
        syn::UseTree::Glob(_) => out.push(prefix.clone()),
        syn::UseTree::Group(g) => {
            for tree in &g.items {
                use_paths(tree, prefix, out);
            }
        }
    }
}

impl<'ast> Visit<'ast> for Checker<'_> {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let mut paths = Vec::new();
        use_paths(&item.tree, &mut Vec::new(), &mut paths);
        let line = span_line(item.use_token.span);
        for path in paths {
            self.check_path(&path, line);
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        if let Some(first) = path.segments.first() {
            self.check_path(&segments, span_line(first.ident.span()));
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        self.module.push(item.ident.to_string());
        syn::visit::visit_item_mod(self, item);
        self.module.pop();
    }

    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        let first = span_line(item.sig.fn_token.span);
        let last = item.block.brace_token.span.close().end().line;
        self.check_fn(&item.sig.ident.to_string(), &item.attrs, first, last);
        syn::visit::visit_item_fn(self, item);
    }

    fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
        let first = span_line(item.sig.fn_token.span);
        let last = item.block.brace_token.span.close().end().line;
        self.check_fn(&item.sig.ident.to_string(), &item.attrs, first, last);
        syn::visit::visit_impl_item_fn(self, item);
    }

    fn visit_trait_item_fn(&mut self, item: &'ast syn::TraitItemFn) {
        if let Some(block) = &item.default {
            let first = span_line(item.sig.fn_token.span);
            let last = block.brace_token.span.close().end().line;
            self.check_fn(&item.sig.ident.to_string(), &item.attrs, first, last);
        }
        syn::visit::visit_trait_item_fn(self, item);
    }
}

/// What one file breaks; `rel` is its path under `src/`.
fn check_source(rel: &Path, source: &str) -> Vec<Finding> {
    let module = module_of(rel);
    let file = syn::parse_file(source).unwrap_or_else(|e| panic!("src/{}: {e}", rel.display()));
    let lines: Vec<&str> = source.lines().collect();
    let name = format!("src/{}", rel.display());
    let mut checker = Checker {
        file: &name,
        source: &lines,
        module,
        findings: Vec::new(),
    };
    checker.visit_file(&file);
    checker.findings
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
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

fn check_tree() -> (Vec<Finding>, BTreeMap<String, usize>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut findings = Vec::new();
    let mut per_layer = BTreeMap::new();
    for path in files {
        let rel = path.strip_prefix(&src).expect("under src/");
        let source = std::fs::read_to_string(&path).expect("readable source");
        if let Some(layer) = module_of(rel).first().cloned() {
            *per_layer.entry(layer).or_default() += 1;
        }
        findings.extend(check_source(rel, &source));
    }
    (findings, per_layer)
}

#[test]
fn dependencies_point_down_and_functions_stay_short() {
    let (findings, per_layer) = check_tree();
    // Every file of the library sits in a layer.
    for layer in per_layer.keys() {
        assert!(
            ALLOWED.iter().any(|(l, _)| l == layer),
            "src/{layer}/ is no layer of tests/layers.rs's ALLOWED; add it there, in its place"
        );
    }
    assert!(per_layer.len() >= ALLOWED.len(), "layers found: {per_layer:?}");
    let report: Vec<String> = findings.iter().map(ToString::to_string).collect();
    assert!(
        report.is_empty(),
        "the layout's rules are broken:\n{}",
        report.join("\n")
    );
}

#[test]
fn an_upward_use_is_found_in_any_form() {
    let model = Path::new("model/record.rs");
    for source in [
        "use crate::runtime::context::Context;",
        "use crate::{model::id, controller::plan};",
        "fn f() { let _ = crate::api::router(); }",
        "mod tests { use super::super::super::rotation::rotate; }",
    ] {
        let found = check_source(model, source);
        assert_eq!(found.len(), 1, "{source}: {found:?}");
        assert!(found[0].what.contains("`model` uses"), "{}", found[0]);
    }
    // The API may use the rotation, not the controller.
    let api = Path::new("api/handlers.rs");
    assert!(check_source(api, "use crate::rotation::rotate;").is_empty());
    assert_eq!(check_source(api, "use crate::controller::plan::plan;").len(), 1);
    // Downward and sideways (within a layer) are fine.
    let runtime = Path::new("runtime/watches.rs");
    assert!(
        check_source(
            runtime,
            "use crate::model::crd::OAuthApp; use super::store::Store;"
        )
        .is_empty()
    );
}

#[test]
fn a_long_function_needs_a_reason_next_to_it() {
    let body = "    let _ = 1;\n".repeat(MAX_FN_LINES);
    let bare = format!("fn long() {{\n{body}}}\n");
    let found = check_source(Path::new("model/id.rs"), &bare);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].what.contains("fn `long`"), "{}", found[0]);
    let reasoned = format!("// Long: one match over every step, read as a table.\n#[inline]\n{bare}");
    assert!(check_source(Path::new("model/id.rs"), &reasoned).is_empty());
    // The binaries' crate roots are in no layer, and their functions are held to the same length.
    assert_eq!(check_source(Path::new("main.rs"), &bare).len(), 1);
    assert_eq!(check_source(Path::new("bin/kubectl-oauthapp.rs"), &bare).len(), 1);
    let short = format!(
        "fn short() {{\n{}}}\n",
        "    let _ = 1;\n".repeat(MAX_FN_LINES - 2)
    );
    assert!(check_source(Path::new("model/id.rs"), &short).is_empty());
}
