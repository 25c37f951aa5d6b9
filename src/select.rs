//! File selection: `OCIMODEL_INCLUDE` / `OCIMODEL_EXCLUDE` glob lists, so a
//! server fetches only what it needs (e.g. `*.safetensors,config.json`).
//!
//! A pattern without `/` matches a file's name in any directory; one with `/`
//! matches the whole relative path. `*` and `?` stay within one path
//! component, `**` crosses them. A file is kept when it matches some include
//! (or there are none) and no exclude. Layers that are whole files are
//! filtered before download, so excluded blobs are never fetched; entries of
//! tar layers are filtered as they stream by.
//!
//! KServe's own selective download (`STORAGE_ALLOW_PATTERNS`,
//! `STORAGE_IGNORE_PATTERNS`: a JSON array or a comma list) is read too, with
//! KServe's semantics (`kserve_storage._should_download`): Python's `fnmatch`
//! against the whole relative path, `*` crossing `/`. Both filters apply: a
//! file is installed only when each keeps it.

use anyhow::{bail, Result};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    include: Vec<String>,
    exclude: Vec<String>,
    /// KServe's allow and ignore patterns (fnmatch).
    allow: Vec<String>,
    ignore: Vec<String>,
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
            ..Filter::default()
        }
    }

    /// Adds KServe's `STORAGE_ALLOW_PATTERNS` / `STORAGE_IGNORE_PATTERNS`.
    pub fn with_kserve(mut self, allow: Option<&str>, ignore: Option<&str>) -> Result<Filter> {
        self.allow = kserve_patterns(allow, "STORAGE_ALLOW_PATTERNS")?;
        self.ignore = kserve_patterns(ignore, "STORAGE_IGNORE_PATTERNS")?;
        Ok(self)
    }

    pub fn is_empty(&self) -> bool {
        self.include.is_empty()
            && self.exclude.is_empty()
            && self.allow.is_empty()
            && self.ignore.is_empty()
    }

    /// Whether the file at `path` (relative, `/`-separated) is kept.
    pub fn allows(&self, path: &str) -> bool {
        self.rejected_by(path).is_none()
    }

    /// The settings that drop the file at `path`, if any do.
    pub fn rejected_by(&self, path: &str) -> Option<&'static str> {
        let hit = |p: &String| {
            if p.contains('/') {
                glob(p.as_bytes(), path.as_bytes())
            } else {
                let name = path.rsplit('/').next().unwrap_or(path);
                glob(p.as_bytes(), name.as_bytes())
            }
        };
        let ours = (self.include.is_empty() || self.include.iter().any(hit))
            && !self.exclude.iter().any(hit);
        let fnmatches = |p: &String| fnmatch(p.as_bytes(), path.as_bytes());
        let kserve = (self.allow.is_empty() || self.allow.iter().any(fnmatches))
            && !self.ignore.iter().any(fnmatches);
        match (ours, kserve) {
            (true, true) => None,
            (false, _) => Some("OCIMODEL_INCLUDE/OCIMODEL_EXCLUDE"),
            (true, false) => Some("STORAGE_ALLOW_PATTERNS/STORAGE_IGNORE_PATTERNS"),
        }
    }

    /// For logs and the marker.
    pub fn describe(&self) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        let mut d = format!(
            "include [{}] exclude [{}]",
            self.include.join(", "),
            self.exclude.join(", ")
        );
        if !self.allow.is_empty() || !self.ignore.is_empty() {
            d.push_str(&format!(
                " storage-allow [{}] storage-ignore [{}]",
                self.allow.join(", "),
                self.ignore.join(", ")
            ));
        }
        Some(d)
    }
}

/// KServe's list forms: a JSON array (or one JSON string), else a comma
/// list; blank items dropped (`_parse_patterns_from_env`).
fn kserve_patterns(value: Option<&str>, name: &str) -> Result<Vec<String>> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(Vec::new());
    };
    let items: Vec<String> = match serde_json::from_str::<serde_json::Value>(v) {
        Ok(serde_json::Value::Array(a)) => a
            .iter()
            .map(|p| match p {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Ok(serde_json::Value::String(s)) => vec![s],
        Ok(other) if !v.starts_with('[') => vec![other.to_string()],
        Ok(_) => bail!("{name} is JSON but not a list of patterns: '{v}'"),
        Err(_) if v.starts_with('[') => {
            bail!("{name} starts like a JSON list but is not one: '{v}'")
        }
        Err(_) => v.split(',').map(str::to_string).collect(),
    };
    Ok(items
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect())
}

/// Python's `fnmatch.fnmatchcase` (what `fnmatch.fnmatch` is on POSIX):
/// `*` any run (`/` included), `?` any one character, `[seq]`, `[!seq]`
/// with ranges; a `[` without its `]` is literal.
fn fnmatch(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.first() {
        None => text.is_empty(),
        Some(b'*') => (0..=text.len()).any(|i| fnmatch(&pattern[1..], &text[i..])),
        Some(b'?') => {
            let n = utf8_len(text);
            n > 0 && fnmatch(&pattern[1..], &text[n..])
        }
        Some(b'[') => match class(&pattern[1..]) {
            Some((negated, set, rest)) => {
                let n = utf8_len(text);
                if n == 0 {
                    return false;
                }
                let c = std::str::from_utf8(&text[..n])
                    .ok()
                    .and_then(|s| s.chars().next());
                let hit = c.is_some_and(|c| set.iter().any(|&(lo, hi)| lo <= c && c <= hi));
                hit != negated && fnmatch(rest, &text[n..])
            }
            None => !text.is_empty() && text[0] == b'[' && fnmatch(&pattern[1..], &text[1..]),
        },
        Some(&c) => !text.is_empty() && text[0] == c && fnmatch(&pattern[1..], &text[1..]),
    }
}

/// A character class after its `[`: (negated, ranges, the pattern after `]`).
type Class<'a> = (bool, Vec<(char, char)>, &'a [u8]);

fn class(after: &[u8]) -> Option<Class<'_>> {
    let text = std::str::from_utf8(after).ok()?;
    let (negated, body_start) = match text.as_bytes().first() {
        Some(b'!') => (true, 1),
        _ => (false, 0),
    };
    // A `]` right after `[` or `[!` is a member, not the end.
    let search_from = body_start + usize::from(text.as_bytes().get(body_start) == Some(&b']'));
    let end = search_from + text[search_from..].find(']')?;
    let chars: Vec<char> = text[body_start..end].chars().collect();
    let mut set = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if i + 2 < chars.len() && chars[i + 1] == '-' {
            set.push((chars[i], chars[i + 2]));
            i += 3;
        } else {
            set.push((chars[i], chars[i]));
            i += 1;
        }
    }
    Some((negated, set, &after[end + 1..]))
}

/// Bytes of the first UTF-8 character of `text` (0 when empty).
fn utf8_len(text: &[u8]) -> usize {
    match text.first() {
        None => 0,
        Some(b) if *b < 0x80 => 1,
        Some(b) if *b >= 0xF0 => 4.min(text.len()),
        Some(b) if *b >= 0xE0 => 3.min(text.len()),
        Some(_) => 2.min(text.len()),
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

    /// Cases checked against Python's `fnmatch.fnmatch` on POSIX.
    #[test]
    fn fnmatch_as_python_does() {
        let cases: &[(&str, &str, bool)] = &[
            ("*.json", "tokenizer.json", true),
            ("*.json", "sub/config.json", true),
            ("tokenizer.json", "sub/tokenizer.json", false),
            ("*/tokenizer.json", "sub/tokenizer.json", true),
            (
                "model-0000?-of-00002.safetensors",
                "model-00001-of-00002.safetensors",
                true,
            ),
            ("[mt]*.txt", "merges.txt", true),
            ("[!mt]*.txt", "merges.txt", false),
            ("[a-c]x", "bx", true),
            ("[]]x", "]x", true),
            ("[x", "[x", true),
            ("*", "", true),
            ("?", "é", true),
            ("a*b*c", "a/x/b/y/c", true),
            ("a*b*c", "a/x/b/y/d", false),
        ];
        for (p, t, want) in cases {
            assert_eq!(fnmatch(p.as_bytes(), t.as_bytes()), *want, "{p} ~ {t}");
        }
    }

    /// KServe's LLMInferenceService tokenizer container's allow list, and
    /// both list forms; both filters must keep a file.
    #[test]
    fn kserve_patterns_combine_with_ours() {
        let allow = r#"["tokenizer.json","tokenizer_config.json","special_tokens_map.json","vocab.json","merges.txt","config.json","generation_config.json"]"#;
        let f = Filter::default().with_kserve(Some(allow), None).unwrap();
        assert!(f.allows("tokenizer.json"));
        assert!(!f.allows("model-00001-of-00002.safetensors"));
        assert!(
            !f.allows("sub/tokenizer.json"),
            "fnmatch matches the whole path"
        );
        let f = Filter::new(&["*.json".into()], &[])
            .with_kserve(Some("*.json, *.txt"), Some("*config*"))
            .unwrap();
        assert!(f.allows("vocab.json"));
        assert!(!f.allows("merges.txt"), "ours keeps only *.json");
        assert!(
            !f.allows("tokenizer_config.json"),
            "KServe ignores *config*"
        );
        assert!(Filter::default()
            .with_kserve(Some(" "), Some(""))
            .unwrap()
            .is_empty());
        let err = Filter::default()
            .with_kserve(Some("[\"a\""), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("STORAGE_ALLOW_PATTERNS starts like a JSON list"),
            "{err}"
        );
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
