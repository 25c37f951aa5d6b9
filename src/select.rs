//! File selection: `OCIMODEL_INCLUDE` / `OCIMODEL_EXCLUDE` glob lists, so a
//! server fetches only what it needs (e.g. `*.safetensors,config.json`).
//!
//! A pattern without `/` matches a file's name in any directory; one with `/`
//! matches the whole relative path. `*` and `?` stay within one path
//! component, `**` crosses them. A file is kept when it matches some include
//! (or there are none) and no exclude. Layers that are whole files are
//! filtered before download, so excluded blobs are never fetched; entries of
//! tar layers are filtered as they stream by.

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    include: Vec<String>,
    exclude: Vec<String>,
}

impl Filter {
    /// From comma-separated lists (empty items ignored).
    pub fn new(include: &[String], exclude: &[String]) -> Filter {
        let clean = |v: &[String]| {
            v.iter()
                .flat_map(|s| s.split(','))
                .map(|s| s.trim().trim_start_matches("./").to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        Filter {
            include: clean(include),
            exclude: clean(exclude),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// Whether the file at `path` (relative, `/`-separated) is kept.
    pub fn allows(&self, path: &str) -> bool {
        let hit = |p: &String| {
            if p.contains('/') {
                glob(p.as_bytes(), path.as_bytes())
            } else {
                let name = path.rsplit('/').next().unwrap_or(path);
                glob(p.as_bytes(), name.as_bytes())
            }
        };
        (self.include.is_empty() || self.include.iter().any(hit)) && !self.exclude.iter().any(hit)
    }

    /// For logs and the marker.
    pub fn describe(&self) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        Some(format!(
            "include [{}] exclude [{}]",
            self.include.join(", "),
            self.exclude.join(", ")
        ))
    }
}

/// Matches `text` against `pattern` (`*`, `?`, `**`).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.first() {
        None => text.is_empty(),
        Some(b'*') if pattern.get(1) == Some(&b'*') => {
            // `**/` also matches zero directories.
            let rest = &pattern[2..];
            let rest_no_slash = rest.strip_prefix(b"/").unwrap_or(rest);
            (0..=text.len()).any(|i| glob(rest, &text[i..]) || glob(rest_no_slash, &text[i..]))
        }
        Some(b'*') => {
            let rest = &pattern[1..];
            for i in 0..=text.len() {
                if glob(rest, &text[i..]) {
                    return true;
                }
                if i < text.len() && text[i] == b'/' {
                    break;
                }
            }
            false
        }
        Some(b'?') => !text.is_empty() && text[0] != b'/' && glob(&pattern[1..], &text[1..]),
        Some(&c) => !text.is_empty() && text[0] == c && glob(&pattern[1..], &text[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(inc: &str, exc: &str) -> Filter {
        Filter::new(&[inc.to_string()], &[exc.to_string()])
    }

    #[test]
    fn globs() {
        assert!(glob(b"*.safetensors", b"model-00001.safetensors"));
        assert!(!glob(b"*.safetensors", b"a/model.safetensors"));
        assert!(glob(b"**/*.bin", b"a/b/c.bin"));
        assert!(glob(b"**/*.bin", b"c.bin"));
        assert!(glob(b"tok?nizer.json", b"tokenizer.json"));
        assert!(!glob(b"a/*", b"a/b/c"));
        assert!(glob(b"a/**", b"a/b/c"));
    }

    #[test]
    fn include_and_exclude() {
        let filter = f("*.safetensors,config.json", "*-00002-*");
        assert!(filter.allows("model-00001-of-00002.safetensors"));
        assert!(
            filter.allows("sub/dir/config.json"),
            "a bare name matches in any directory"
        );
        assert!(!filter.allows("model-00002-of-00002.safetensors"));
        assert!(!filter.allows("README.md"));
        assert!(Filter::default().allows("anything"));
        assert!(Filter::new(&[], &["*.md".into()]).allows("x.bin"));
        assert!(!Filter::new(&[], &["*.md".into()]).allows("docs/x.md"));
        assert!(f("1/model.onnx", "").allows("1/model.onnx"));
        assert!(!f("1/model.onnx", "").allows("2/model.onnx"));
    }
}
