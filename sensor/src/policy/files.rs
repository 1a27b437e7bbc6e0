//! Policy files and directories: YAML documents in, parsed policies out, with
//! every error tied to its file and field.
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{parse, raw::RawPolicy, Policy, PolicyError};

/// What a set of files yielded.
#[derive(Debug, Default)]
pub struct Loaded {
    pub policies: Vec<(PathBuf, Policy)>,
    /// Documents meant for another consumer (Cilium network policies), with
    /// their file and kind.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Kinds that may share `policies/` but are enforced by Cilium, not here.
const CILIUM_KINDS: &[&str] = &["CiliumClusterwideNetworkPolicy", "CiliumNetworkPolicy"];

fn error(file: &Path, field: impl Into<String>, reason: impl Into<String>) -> PolicyError {
    PolicyError {
        file: file.to_path_buf(),
        field: field.into(),
        reason: reason.into(),
    }
}

/// Loads every document of one file.
pub fn load_file(file: &Path, into: &mut Loaded) -> Result<(), PolicyError> {
    let text = std::fs::read_to_string(file).map_err(|e| error(file, "(file)", e.to_string()))?;
    for (doc_index, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc)
            .map_err(|e| error(file, "(yaml)", e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let prefix = if doc_index == 0 {
            String::new()
        } else {
            format!("document {doc_index}: ")
        };
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default();
        if CILIUM_KINDS.contains(&kind) {
            into.skipped.push((file.to_path_buf(), kind.to_string()));
            continue;
        }
        let raw: RawPolicy = serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            error(file, format!("{prefix}{field}"), e.into_inner().to_string())
        })?;
        let policy = parse::policy(raw)
            .map_err(|e| error(file, format!("{prefix}{}", e.field), e.reason))?;
        into.policies.push((file.to_path_buf(), policy));
    }
    Ok(())
}

/// Loads every `*.yaml` / `*.yml` file of a directory, in name order.
pub fn load_dir(dir: &Path, into: &mut Loaded) -> Result<(), PolicyError> {
    let entries = std::fs::read_dir(dir).map_err(|e| error(dir, "(directory)", e.to_string()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    for f in files {
        load_file(&f, into)?;
    }
    Ok(())
}
