//! Every link in the README and in `docs/` resolves inside the repository: a file or a
//! folder that exists, and an `#anchor` that names a heading of its target, as GitHub
//! renders them. A user who clones the repository has nothing else, so a link that
//! leaves it (`../shared`, an absolute path) is refused too; web links are not followed.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root exists")
}

/// The documents a reader walks: the README and every Markdown file under `docs/`.
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut docs = vec![root.join("README.md")];
    let mut dir: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .map(|e| e.expect("docs/ is readable").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    dir.sort();
    docs.extend(dir);
    docs
}

/// The lines of a Markdown text outside fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// A line without its code spans, whose text is not Markdown.
fn without_code(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
        } else if !in_code {
            out.push(c);
        }
    }
    out
}

/// The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor of a document's headings, duplicates numbered as GitHub numbers them.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for line in prose(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if hashes == 0 || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[hashes..].replace('`', ""));
        let mut candidate = base.clone();
        let mut n = 0;
        while seen.contains(&candidate) {
            n += 1;
            candidate = format!("{base}-{n}");
        }
        seen.insert(candidate);
    }
    seen
}

/// The targets of the inline links `[text](target)` of a document.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(text) {
        let line = without_code(line);
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after.find([')', ' ']).unwrap_or(after.len());
            out.push(after[..end].to_string());
            rest = &after[end..];
        }
    }
    out
}

/// `path` with `.` and `..` resolved, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn every_link_in_the_readme_and_docs_resolves_inside_the_repository() {
    let root = repo();
    let mut broken = Vec::new();
    let mut checked = 0;
    for doc in documents(&root) {
        let text = std::fs::read_to_string(&doc).expect("a document is readable");
        let name = doc
            .strip_prefix(&root)
            .unwrap_or(&doc)
            .display()
            .to_string();
        for target in links(&text) {
            if target.starts_with("http://")
                || target.starts_with("https://")
                || target.starts_with("mailto:")
            {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                doc.clone()
            } else {
                normalize(&doc.parent().expect("a document is in a folder").join(path))
            };
            if path.starts_with('/') || !file.starts_with(&root) {
                broken.push(format!("{name}: {target} leaves the repository"));
                continue;
            }
            if !file.exists() {
                broken.push(format!("{name}: {target}: no such file"));
                continue;
            }
            if let Some(anchor) = anchor {
                let is_md = file.extension().is_some_and(|e| e == "md");
                let target_text = std::fs::read_to_string(&file).unwrap_or_default();
                if !is_md || !anchors(&target_text).contains(anchor) {
                    broken.push(format!("{name}: {target}: no heading #{anchor} there"));
                }
            }
        }
    }
    assert!(checked > 50, "the documents have links: {checked} checked");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_checker_reads_links_and_headings_as_github_does() {
    let text = "# Title\n## Operating it: pause, `ledger top`\n## Title\n```\n[not](a-link)\n```\nsee [`x`](docs/api.md#1-http) and [y](#title-1) `[z](no)`\n";
    assert_eq!(links(text), ["docs/api.md#1-http", "#title-1"]);
    let a = anchors(text);
    assert!(a.contains("title") && a.contains("title-1"), "{a:?}");
    assert!(a.contains("operating-it-pause-ledger-top"), "{a:?}");
    assert_eq!(
        slug("Operating the projector (/v1/admin/…)"),
        "operating-the-projector-v1admin"
    );
}
