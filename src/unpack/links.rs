//! Symlinks and hard links must resolve inside the tree: targets are
//! confined when written and every chain is followed again on the finished
//! tree, so the order of entries cannot be used to escape.

use std::collections::VecDeque;
use std::fs;
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::{clean_path, join, Mapped, Subtree, MAX_SYMLINK_HOPS};

/// Checks a symlink target at creation: relative targets must stay inside
/// lexically; absolute ones inside the subtree are rewritten as relative.
pub(super) fn confine_symlink(
    link: &[String],
    target: &Path,
    subtree: Option<&Subtree>,
) -> Result<PathBuf> {
    let parent = &link[..link.len() - 1];
    if target.is_absolute() {
        let Some(subtree) = subtree else {
            bail!(
                "refusing symlink '{}' -> '{}': absolute targets have no meaning in an artifact",
                join(link),
                target.display()
            );
        };
        let abs = clean_path(Path::new(target.to_string_lossy().trim_start_matches('/')))
            .with_context(|| format!("symlink '{}' -> '{}'", join(link), target.display()))?;
        return match subtree.map(&abs) {
            Mapped::Inside(t) => Ok(relative_path(parent, &t)),
            _ => bail!(
                "refusing symlink '{}' -> '{}': the target is outside {}",
                join(link),
                target.display(),
                subtree.display()
            ),
        };
    }
    let mut stack: Vec<&str> = parent.iter().map(String::as_str).collect();
    for c in target.components() {
        match c {
            Component::Normal(s) => stack.push(
                s.to_str()
                    .ok_or_else(|| anyhow!("symlink target is not UTF-8"))?,
            ),
            Component::ParentDir if stack.pop().is_none() => {
                bail!(
                    "refusing symlink '{}' -> '{}': it points outside the model directory",
                    join(link),
                    target.display()
                );
            }
            _ => {}
        }
    }
    Ok(target.to_path_buf())
}

/// `from_dir` → `to` as a relative path (`../../x/y`).
pub(super) fn relative_path(from_dir: &[String], to: &[String]) -> PathBuf {
    let common = from_dir.iter().zip(to).take_while(|(a, b)| a == b).count();
    let mut p = PathBuf::new();
    for _ in common..from_dir.len() {
        p.push("..");
    }
    for c in &to[common..] {
        p.push(c);
    }
    if p.as_os_str().is_empty() {
        p.push(".");
    }
    p
}

/// Resolves the symlink at `link` inside `root`, following chains, and fails
/// if resolution ever leaves `root` or loops.
pub(super) fn check_link_inside(root: &Path, link: &[String]) -> Result<()> {
    let mut stack: Vec<String> = link[..link.len() - 1].to_vec();
    let first = fs::read_link(root.join(join(link)))?;
    let mut pending: VecDeque<String> = VecDeque::new();
    let mut hops = 0;
    let push_target = |pending: &mut VecDeque<String>, t: &Path| -> Result<()> {
        if t.is_absolute() {
            bail!(
                "refusing symlink '{}': it resolves through an absolute target '{}'",
                join(link),
                t.display()
            );
        }
        let parts: Vec<String> = t
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect();
        for p in parts.into_iter().rev() {
            pending.push_front(p);
        }
        Ok(())
    };
    push_target(&mut pending, &first)?;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            if stack.pop().is_none() {
                bail!(
                    "refusing symlink '{}': following it leaves the model directory",
                    join(link)
                );
            }
            continue;
        }
        stack.push(part);
        let path = root.join(join(&stack));
        if let Ok(m) = fs::symlink_metadata(&path) {
            if m.file_type().is_symlink() {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    bail!(
                        "refusing symlink '{}': it is part of a symlink loop",
                        join(link)
                    );
                }
                let t = fs::read_link(&path)?;
                stack.pop();
                push_target(&mut pending, &t)?;
            }
        }
    }
    Ok(())
}
